"""Stage 3's learned category decision: the hand-set rule as its starting point, the fit, the
trainer's export rule, and the aligner serving the shipped weights."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from models.decision import (
    BLOCKS,
    DECISION_WEIGHTS,
    CategoryDecider,
    CategoryEvidence,
    DecisionNet,
    shipped_decider,
)
from models.garments import CATEGORIES
from models.train.common import export_refusal, stages_stamp
from models.train.decision import (
    DecisionTrainConfig,
    fit_decision,
    posteriors,
    train_decision,
)

C = len(CATEGORIES)


def _evidence(rng: np.random.Generator) -> CategoryEvidence:
    return CategoryEvidence(parser=np.log(rng.dirichlet(np.ones(C)) + 1e-6),
                            vote=np.log(rng.integers(0, 10, C) + 0.5),
                            fit=rng.normal(-3, 0.5, C))


def test_an_unweighed_decision_is_the_hand_set_rule() -> None:
    """parser × vote^0.5 × fit^−1, normalised: what decided before the decision learned."""
    rng = np.random.default_rng(0)
    for _ in range(5):
        e = _evidence(rng)
        e.head = np.log(rng.dirichlet(np.ones(C)) + 1e-6)  # a block the rule did not weigh
        rule = np.exp(e.parser) * np.exp(e.vote) ** 0.5 * np.exp(e.fit) ** -1.0
        rule /= rule.sum()
        for net in (DecisionNet.rule(0.5, 1.0), DecisionNet.from_config("tiny"),
                    DecisionNet(per_category=True)):
            got = CategoryDecider(net).posterior(e)
            assert list(got) == list(CATEGORIES)
            assert np.allclose([got[c] for c in CATEGORIES], rule, atol=1e-5)


def test_fitting_learns_what_the_rule_gets_wrong() -> None:
    """Evidence whose parser block is biased against one category and whose fit block says
    more than the rule believes: the fitted decision recovers accuracy the rule loses."""
    rng = np.random.default_rng(1)
    n = 3000
    truth = rng.integers(0, C, n)
    parser = rng.normal(0, 1, (n, C))
    parser[np.arange(n), truth] += 2.5
    parser[:, 3] -= 3.0  # the parser rarely believes category 3
    fit = rng.normal(0, 1, (n, C))
    fit[np.arange(n), truth] -= 1.5  # a lower residual for the true category
    evidence = np.stack([parser, np.zeros((n, C)), fit], -1).astype(np.float32)
    rule = DecisionNet.rule(0.5, 1.0)
    before = (posteriors(rule, evidence).argmax(1) == truth).mean()
    net = DecisionNet(per_category=False)  # parser, vote, fit
    fit_decision(net, evidence[:2000], truth[:2000], l2=1e-3, steps=200)
    after = (posteriors(net, evidence[2000:]).argmax(1) == truth[2000:]).mean()
    assert after > (posteriors(rule, evidence[2000:]).argmax(1) == truth[2000:]).mean() + 0.03
    assert after > before
    assert net.bias[3] > net.bias.mean() + 3.0  # it learned the parser's bias


def test_export_only_beats_every_rival() -> None:
    assert export_refusal("accuracy", 0.87, {"the hand-set rule": 0.858}) is None
    refusal = export_refusal("accuracy", 0.86,
                             {"the hand-set rule": 0.858, "the shipped decision": 0.87})
    assert refusal is not None and "the shipped decision's 0.87" in refusal
    assert export_refusal("accuracy", 0.858, {"the hand-set rule": 0.858}) is not None


def test_the_trainer_gathers_evidence_through_the_stages_and_exports_only_a_gain(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = DecisionTrainConfig(out=str(tmp_path / "w"), run_dir=str(tmp_path / "run"),
                              n_train=8, n_val=6, photo_size=256, steps=50, workers=1)
    final = train_decision(cfg)
    out = capsys.readouterr().out
    base = json.loads(out.split("the hand-set rule: ")[1].splitlines()[0].replace("'", '"'))
    exported = (tmp_path / "w" / "config.json").is_file()
    assert exported == (final["accuracy"] > base["accuracy"])
    assert ("exported to" in out) == exported
    # The evidence is cached under the stages that gather it (not the decision itself).
    stamp = stages_stamp(decided=False)
    assert sorted(p.name for p in (tmp_path / "run" / "evidence").iterdir()) == [
        f"train-200000-8-256-{stamp}", f"val-1000000-6-256-{stamp}"]
    shard = np.load(next((tmp_path / "run" / "evidence").glob("val-*")) / "000000.npz")
    assert shard["evidence"].shape[1:] == (C, len(BLOCKS))


def test_the_decision_changes_the_stamp_of_what_is_made_behind_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import shutil

    from models import decision

    before, evidence = stages_stamp(), stages_stamp(decided=False)
    folder = tmp_path / "decision"
    shutil.copytree(DECISION_WEIGHTS, folder)
    monkeypatch.setattr(decision, "DECISION_WEIGHTS", folder)
    assert stages_stamp() == before
    (folder / "model.safetensors").write_bytes(b"other weights")
    assert stages_stamp() != before
    assert stages_stamp(decided=False) == evidence


def test_the_aligner_decides_with_the_shipped_decision() -> None:
    """The shipped weights load, beat the rule on their own validation record, and are what
    `StructureAligner` weighs the evidence with (the rule only where none ships)."""
    from models.garments import generate
    from models.pipelines.stages import StructureAligner, parse_garment

    decider = shipped_decider()
    assert decider is not None
    meta = json.loads((DECISION_WEIGHTS / "config.json").read_text())
    assert meta["metrics"]["accuracy"] > meta["baseline"]["accuracy"]
    aligner = StructureAligner()
    aligner.load()
    assert aligner.decider is decider
    s = generate(1_000_004, size=256)
    parsed = parse_garment(aligner.parser, s.wild_image, with_head=True)
    query, _ = aligner.embed(s.wild_image, parsed.mask > 0.5)
    bank = aligner.fresh_bank()
    evidence, _ = aligner.category_evidence(parsed, bank, query)
    posterior, fits = aligner.category_posterior(parsed, bank, query)
    assert posterior == decider.posterior(evidence)
    assert fits and set(fits) <= set(CATEGORIES)
    aligner.decider = None
    rule = CategoryDecider(DecisionNet.rule(aligner.VOTE_WEIGHT, aligner.FIT_WEIGHT))
    assert aligner.category_posterior(parsed, bank, query)[0] == rule.posterior(evidence)
    with torch.no_grad():
        assert not torch.equal(decider.net.weight, rule.net.weight)


def test_the_category_head_is_evidence_of_its_own() -> None:
    """A decision that weighs the head reads its probabilities from the parse (mixed into
    the parser's or not); without a head there is no such evidence, and it says so."""
    e = _evidence(np.random.default_rng(2))
    net = DecisionNet(per_category=False, blocks=("parser", "vote", "fit", "head"))
    assert net.weight[0, 3] == 0  # a block the rule did not weigh starts at nothing
    with pytest.raises(ValueError, match="no head evidence"):
        CategoryDecider(net).posterior(e)
    e.head = np.log(np.full(C, 1.0 / C))
    rule = CategoryDecider(DecisionNet.rule(0.5, 1.0)).posterior(e)
    assert CategoryDecider(net).posterior(e) == pytest.approx(rule)
    with pytest.raises(ValueError, match="unknown evidence"):
        DecisionNet(blocks=("parser", "weather"))


def test_a_parser_with_a_head_hands_its_probabilities_on() -> None:
    from models.garments import generate
    from models.parser import PARSER_WEIGHTS, GarmentParser
    from models.pattern import CategoryClassifier, PatternNet

    head = CategoryClassifier(PatternNet.from_config({"width": 4, "input_size": 32},
                                                     classes=C))
    parser = GarmentParser.from_pretrained(PARSER_WEIGHTS, head=head)
    parser.head_weight = 0.0
    s = generate(1_000_001, size=256)
    parsed = parser.parse(s.wild_image, with_head=True)
    assert parsed.head_probs is not None
    np.testing.assert_allclose(parsed.head_probs, head.probabilities(s.wild_image, parsed.mask))
    alone = GarmentParser.from_pretrained(PARSER_WEIGHTS).parse(s.wild_image)
    assert alone.head_probs is None
    assert parsed.category_probs == alone.category_probs  # not mixed at weight 0
