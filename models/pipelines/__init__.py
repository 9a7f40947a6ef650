"""The pipelines themselves, one file each, built by name through `models.pipeline`'s
registry (which holds the contracts they share and imports none of them until one is built).

`stages` is stages 1–5 of DESIGN.md as one public component (`StructureAligner`) and the
shared last step from a garment on the canonical canvas to the delivered result (`deliver`);
`cutout` and `flatten` (with `nearest`) are the baselines without a generator; the
generator's pipelines live beside the generator (`models.generator.pipeline_ragdiffusion`).
"""
