"""Text hints: checking, describing, the text tower (save/load, training, the shipped one on
validation descriptions), retrieval with a hint (agreeing, contradicting, overridden by a
structure), and a hint through the service into the status."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient

from models.garments import CATEGORIES, SPLITS, generate
from models.hints import (
    HINTS_WEIGHTS,
    HintEncoder,
    HintNet,
    combine_categories,
    describe,
    hint_evidence,
    hint_outcome,
    read_hint,
    restrict_rows,
    structure_attributes,
)
from models.io import decode_image
from models.pipeline import (
    HINT_MAX_CHARS,
    InvalidHint,
    PipelineOptions,
    check_hint,
    get_pipeline,
)

TINY = {"embed_dim": 128, "text_cfg": {"context_length": 16, "vocab_size": 49408,
                                       "width": 16, "heads": 2, "layers": 1}}


def test_hints_are_checked_once_for_everyone() -> None:
    assert check_hint(None) is None and check_hint("   ") is None
    assert check_hint("long   sleeves ") == "long sleeves"
    assert len(check_hint("a" * HINT_MAX_CHARS)) == HINT_MAX_CHARS
    with pytest.raises(InvalidHint, match="the hint is longer than 200"):
        check_hint("a" * (HINT_MAX_CHARS + 1))
    for bad in ("midi\x00dress", "red\x1b[0m", "zero\u200bwidth", "long\tsleeves"):
        with pytest.raises(InvalidHint, match="may not contain control characters"):
            check_hint(bad)
    with pytest.raises(ValueError, match="may not contain control characters"):
        PipelineOptions(hint="a\x07b")  # the pipelines' own options check the same way


def test_descriptions_state_what_they_say() -> None:
    rng = np.random.default_rng(0)
    s = generate(SPLITS["val"][0], size=64)
    attrs = structure_attributes(s.category, s.flat_landmarks)
    assert attrs["category"] == s.category
    for _ in range(50):
        text, stated = describe(attrs, rng)
        assert text and stated and set(stated) <= set(attrs)
        assert all(attrs[k] == v for k, v in stated.items())


def test_text_tower_round_trip_and_training(tmp_path: Path) -> None:
    from models.train.hints import HintsTrainConfig, train_hints

    torch.manual_seed(0)
    enc = HintEncoder(HintNet(TINY))
    a = enc.embed(["long sleeves", "midi dress"])
    assert a.shape == (2, 128) and np.allclose(np.linalg.norm(a, axis=1), 1, atol=1e-5)
    enc.save_pretrained(tmp_path / "w")
    assert np.allclose(HintEncoder.from_pretrained(tmp_path / "w").embed(["long sleeves",
                                                                          "midi dress"]), a)
    with pytest.raises(FileNotFoundError, match="flatlay train hints"):
        HintEncoder.from_pretrained(tmp_path / "none")
    cfg = HintsTrainConfig(out=str(tmp_path / "t"), run_dir=str(tmp_path / "run"), model=TINY,
                           n_val=6, steps=2, batch=8, eval_every=2, ckpt_every=1, device="cpu")
    metrics = train_hints(cfg)
    assert {"fit_at_1", "category"} <= set(metrics)
    cfg.steps = 3
    train_hints(cfg)  # resumes at step 2
    assert torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=False)["step"] == 3
    assert "flatlay train hints --config tiny --steps 3" in (
        tmp_path / "t" / "MODEL_CARD.md").read_text()


@pytest.fixture(scope="module")
def bank():  # noqa: ANN201
    from structure_bank import StructureBank
    from structure_bank.builder import default_bank_path

    return StructureBank.load(default_bank_path())


def test_shipped_encoder_names_the_described_garment(bank) -> None:  # noqa: ANN001
    """200 validation seeds after those the training run evaluated on, each described in
    full words: the hint's category is the garment's, and its favoured structures share
    the stated sleeve length or length."""
    from models.eval.hints import full_description

    enc = HintEncoder.from_pretrained(HINTS_WEIGHTS)
    start = SPLITS["val"][0] + enc.meta["training"]["config"]["n_val"]
    cats, fits = [], []
    for seed in range(start, start + 200):
        s = generate(seed, size=64)
        attrs = structure_attributes(s.category, s.flat_landmarks)
        ev = hint_evidence(full_description(attrs), bank, enc)
        cats.append(ev.category == s.category)
        top = int(np.argmax(ev.rows))
        got = structure_attributes(bank.categories[top], bank.entry_landmarks(top))
        fits.append(all(got.get(k) == attrs[k] for k in ("sleeve_length", "length")
                        if k in attrs))
    assert np.mean(cats) >= 0.95 and np.mean(fits) >= 0.7, (np.mean(cats), np.mean(fits))


def test_the_hint_weighs_in_and_restricts_the_structures(bank) -> None:  # noqa: ANN001
    enc = HintEncoder.from_pretrained(HINTS_WEIGHTS)
    ev = hint_evidence("long sleeve dress", bank, enc)
    assert ev.category == "dress" and abs(sum(ev.categories.values()) - 1) < 1e-5
    photo = {c: 0.05 / (len(CATEGORIES) - 2) for c in CATEGORIES}
    photo.update(skirt=0.5, dress=0.45)
    assert max(combine_categories(photo, ev).items(), key=lambda kv: kv[1])[0] == "dress"
    rows = restrict_rows(ev, bank.categories, "dress", minimum=10)
    dresses = np.flatnonzero(bank.categories == "dress")
    assert 10 <= len(rows) < len(dresses) and set(rows) <= set(dresses)
    sleeves = [structure_attributes("dress", bank.entry_landmarks(r)).get("sleeve_length")
               for r in rows]
    assert np.mean([s == "long" for s in sleeves]) > np.mean(
        [structure_attributes("dress", bank.entry_landmarks(r)).get("sleeve_length") == "long"
         for r in dresses])


def test_words_the_tower_never_saw_are_left_out_and_named(bank) -> None:  # noqa: ANN001
    assert read_hint("Midi dress with 3/4 sleeves") == ("Midi dress with 3/4 sleeves", (), True)
    assert read_hint("a cropped cardigan") == ("a cropped", ("cardigan",), True)
    assert read_hint("Ärmellos Kleid") == ("", ("ärmellos", "kleid"), False)
    enc = HintEncoder.from_pretrained(HINTS_WEIGHTS)
    # Alone, an unknown word is no evidence: the photo's belief comes back unchanged and
    # every structure of the category stays (the raw tower put "cardigan" on trousers, 0.99).
    ev = hint_evidence("cardigan", bank, enc)
    assert not ev.understood and ev.ignored == ("cardigan",)
    photo = {c: 0.02 for c in CATEGORIES}
    photo.update(sweater=1 - 0.02 * (len(CATEGORIES) - 1))
    combined = combine_categories(photo, ev)
    assert all(abs(combined[c] - photo[c]) < 1e-4 for c in CATEGORIES)
    sweaters = np.flatnonzero(bank.categories == "sweater")
    assert list(restrict_rows(ev, bank.categories, "sweater", minimum=10)) == list(sweaters)
    outcome = hint_outcome(ev, photo, "sweater")
    assert outcome["won"] == "photo" and outcome["category"] is None
    assert outcome["ignored"] == ["cardigan"] and "cardigan" in outcome["why"]
    # Beside known words it is dropped and the rest is read.
    mixed = hint_evidence("cardigan-style midi dress", bank, enc)
    assert mixed.understood and mixed.category == "dress"
    assert mixed.ignored == ("cardigan", "style")
    assert "cardigan, style" in hint_outcome(mixed, photo, "dress")["why"]


def test_a_contradicting_hint_does_not_break_the_job() -> None:
    from models.pipeline import StructureSpec

    s = generate(SPLITS["val"][0] + 7, size=512)
    photo = decode_image(s.wild_jpeg)
    run = get_pipeline("flatten")
    plain = run(photo, PipelineOptions(output_size=512))
    assert plain.hint is None
    agree = run(photo, PipelineOptions(output_size=512, hint=plain.category))
    assert agree.hint["won"] == "both" and agree.category == plain.category
    other = "jeans" if plain.category != "jeans" else "hoodie"
    against = run(photo, PipelineOptions(output_size=512, hint=f"{other}, full length"))
    outcome = against.hint
    assert outcome["category"] == other and outcome["photo_category"] == plain.category
    assert outcome["won"] in ("hint", "photo") and outcome["decided"] == against.category
    assert outcome["why"]
    given = StructureSpec(s.category, s.flat_landmarks)
    fixed = run(photo, PipelineOptions(output_size=512, hint=f"{other}", structure=given))
    assert fixed.hint["won"] == "structure" and fixed.category == s.category


@pytest.fixture
def client(tmp_path: Path) -> Iterator[tuple[TestClient, object]]:
    from service.app import create_app
    from service.auth import create_key
    from service.settings import Settings
    from service.store import migrate
    from workers.jobs import WorkerContext

    s = Settings(data_dir=tmp_path / "data")
    s.ensure_dirs()
    migrate(s.resolved_database_url)
    with TestClient(create_app(s)) as c:
        c.headers["Authorization"] = f"Bearer {create_key(c.app.state.ctx.store, 'a').key}"
        worker = WorkerContext.build(s, "test-worker")
        yield c, worker
        worker.close()


def test_a_hint_goes_through_the_service_into_the_status(client) -> None:  # noqa: ANN001
    from tests.support import encode, garment_photo
    from workers.jobs import run_job

    c, worker = client
    photo = encode(garment_photo(320, 240)[0], "JPEG", quality=90)  # a striped t-shirt
    r = c.post("/assets", files={"file": ("t.jpg", photo, "image/jpeg")},
               data={"pipeline": "flatten", "output_size": "256", "hint": "  short sleeve  tee"})
    assert r.status_code == 202, r.text
    assert run_job(worker, r.json()["id"]) == "succeeded"
    status = c.get(f"/assets/{r.json()['id']}").json()
    hint = status["attributes"]["hint"]
    assert hint["text"] == "short sleeve tee" and hint["category"] == "tshirt"
    assert hint["won"] in ("both", "hint", "photo") and hint["decided"] == \
        status["attributes"]["category"]["value"]
    schema = c.get("/openapi.json").json()["components"]["schemas"]
    assert "hint" in schema["Attributes"]["properties"] and "HintOutcome" in schema
