"""Stage 6, generate: the three-level-aligned diffusion pass (DESIGN.md section 1).

One file per part, as in diffusers: `autoencoder` (the latent space and its photo-aligned
decoder), `conditioning` (soft and pattern tokens), `denoiser` (the conditioned UNet),
`detail` (full-resolution detail from the warp), `pipeline_ragdiffusion` (the pipelines that
put them together). Configs are JSON in `models/configs/generator-*.json`; weights are local
`save_pretrained` folders under `models/weights/`.
"""
