"""Text hints: what the catalog already knows ("long sleeves", "midi dress") next to the
structures it describes.

A small open_clip text transformer (`models/configs/hints-NAME.json`, open_clip's BPE
tokenizer that ships with the package) embeds a hint into StructureNet's embedding space,
where the bank's structures already are. It is trained (`flatlay train hints`) on templated,
paraphrased descriptions of the bank's own structures (category, sleeve length, length,
neckline, read from each entry's landmarks by models.attributes) so that a hint's softmax
over the bank puts its mass on the structures that fit every word of it.

At retrieval (`models.pipelines.stages.StructureAligner`) the hint is evidence beside the
photo: its mass per category multiplies the photo's category posterior, and within the
decided category the fusion draws on the structures the hint favours (`restrict_rows`). A
hint that contradicts the photo does not fail the job: `HintOutcome` says which one won and
by how much.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from open_clip.model import CLIPTextCfg, _build_text_tower
from open_clip.tokenizer import SimpleTokenizer
from torch import nn

from models.config import model_config
from models.pretrained import load_weights, read_meta, save_weights

HINTS_WEIGHTS = Path(__file__).parent / "weights" / "hints-tiny"
# The weight of the hint's category evidence against the photo's (1: equal footing).
HINT_WEIGHT = 1.0
# The hint's category belief is mixed with this much of a uniform one: its softmax is sharp
# even for words it never saw ("cardigan"), and a confident photo must be able to win.
HINT_SMOOTHING = 0.2
# Below this share of the hint's mass on the decided category, the hint does not restrict
# the structures fused (it was about another category).
RESTRICT_MASS = 0.2

# Words and paraphrases for each attribute value (retail and everyday names).
CATEGORY_WORDS: dict[str, tuple[str, ...]] = {
    "tshirt": ("t-shirt", "tee", "tshirt", "t shirt", "short sleeve tee"),
    "long_sleeve_top": ("long sleeve top", "long-sleeved top", "longsleeve", "long sleeve tee"),
    "tank_top": ("tank top", "tank", "vest top", "sleeveless top", "camisole"),
    "shirt": ("shirt", "button-up shirt", "button-down shirt", "blouse", "collared shirt"),
    "hoodie": ("hoodie", "hooded sweatshirt", "hoody", "zip hoodie"),
    "sweater": ("sweater", "jumper", "pullover", "knit sweater", "sweatshirt"),
    "jacket": ("jacket", "coat", "blazer", "bomber jacket"),
    "dress": ("dress", "frock", "gown"),
    "skirt": ("skirt", "a-line skirt", "pencil skirt"),
    "trousers": ("trousers", "pants", "slacks", "chinos"),
    "jeans": ("jeans", "denim jeans", "denim pants", "denims"),
    "shorts": ("shorts", "short pants", "bermuda shorts"),
}
SLEEVE_WORDS: dict[str, tuple[str, ...]] = {
    "none": ("sleeveless", "no sleeves", "without sleeves"),
    "cap": ("cap sleeves", "cap sleeve", "cap-sleeved"),
    "short": ("short sleeves", "short sleeve", "short-sleeved"),
    "elbow": ("elbow sleeves", "elbow-length sleeves", "half sleeves"),
    "three-quarter": ("three-quarter sleeves", "3/4 sleeves", "three quarter sleeve"),
    "long": ("long sleeves", "long sleeve", "long-sleeved", "full sleeves"),
}
LENGTH_WORDS: dict[str, tuple[str, ...]] = {
    "mini": ("mini", "short"),
    "knee": ("knee-length", "knee length"),
    "midi": ("midi", "mid-length", "calf-length"),
    "maxi": ("maxi", "floor-length", "long"),
    "shorts": ("short",),
    "cropped": ("cropped", "ankle-length", "capri"),
    "full": ("full-length", "full length", "long"),
}
NECKLINE_WORDS: dict[str, tuple[str, ...]] = {
    "crew": ("crew neck", "crewneck", "round neck"),
    "scoop": ("scoop neck", "scoop neckline", "low round neck"),
    "v": ("v-neck", "v neck", "v-neckline"),
    "turtleneck": ("turtleneck", "roll neck", "high neck"),
    "collar": ("collared", "with a collar"),
    "hood": ("hooded", "with a hood"),
}
ATTRIBUTE_WORDS = {"category": CATEGORY_WORDS, "sleeve_length": SLEEVE_WORDS,
                   "length": LENGTH_WORDS, "neckline": NECKLINE_WORDS}
# The words `describe` joins phrases with: read, but they name nothing.
GLUE_WORDS = frozenset({"with", "and", "a", "length"})
_WORD = re.compile(r"[^\W_]+")  # letters and digits, any script


def _vocabulary() -> frozenset[str]:
    return frozenset(w for table in ATTRIBUTE_WORDS.values() for phrases in table.values()
                     for phrase in phrases for w in _WORD.findall(phrase)) | GLUE_WORDS


# Every word the text tower was trained on. Any other word ("cardigan") it never saw, and its
# softmax still lands confidently somewhere (measured: "cardigan" → trousers 0.99), so such
# words are left out of what is embedded and named in the job's status.
VOCABULARY = _vocabulary()


def read_hint(text: str) -> tuple[str, tuple[str, ...], bool]:
    """(the hint without the words the tower does not know, punctuation kept as it trained
    on it; those words; whether a known word names anything)."""
    words = _WORD.findall(text.lower())
    ignored = tuple(dict.fromkeys(w for w in words if w not in VOCABULARY))
    kept = _WORD.sub(lambda m: m.group(0) if m.group(0).lower() in VOCABULARY else "", text)
    named = any(w in VOCABULARY and w not in GLUE_WORDS for w in words)
    return " ".join(kept.split()), ignored, named


def structure_attributes(category: str, landmarks: np.ndarray) -> dict[str, str]:
    """The describable attributes of a structure (category, and sleeve length, length and
    neckline where they apply), read from its canonical landmarks."""
    from models.attributes import garment_length, neckline, sleeve_length

    out = {"category": category}
    for name, fn in (("sleeve_length", sleeve_length), ("length", garment_length),
                     ("neckline", neckline)):
        value = fn(category, landmarks)
        if value is not None:
            out[name] = value
    return out


def describe(attributes: dict[str, str], rng: np.random.Generator,
             keep: float = 0.6) -> tuple[str, dict[str, str]]:
    """A catalog-style description of some of `attributes` → (text, what it states). The
    category is named most of the time; every other attribute with probability `keep`; at
    least one thing is said."""
    stated = {k: v for k, v in attributes.items()
              if (rng.random() < (0.85 if k == "category" else keep))}
    if not stated:
        key = list(attributes)[int(rng.integers(len(attributes)))]
        stated = {key: attributes[key]}

    def word(key: str) -> str:
        options = ATTRIBUTE_WORDS[key][stated[key]]
        return options[int(rng.integers(len(options)))]

    noun = word("category") if "category" in stated else None
    length = word("length") if "length" in stated else None
    extras = [word(k) for k in ("sleeve_length", "neckline") if k in stated]
    rng.shuffle(extras)
    if noun is not None:
        head = f"{length} {noun}" if length else noun
        if extras and rng.random() < 0.5:
            text = f"{' '.join(extras)} {head}"
        elif extras:
            text = f"{head} with {' and '.join(extras)}" if rng.random() < 0.5 else \
                ", ".join([head, *extras])
        else:
            text = head
    else:
        text = ", ".join(([f"{length} length"] if length else []) + extras)
    if rng.random() < 0.2:
        text = text.capitalize()
    return text, stated


class HintNet(nn.Module):
    """open_clip's text transformer into the structure space (unit vectors), with the
    temperature of its softmax over the bank."""

    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__()
        self.config = config
        self.text = _build_text_tower(int(config["embed_dim"]), CLIPTextCfg(**config["text_cfg"]))
        self.logit_scale = nn.Parameter(torch.tensor(float(np.log(1 / 0.07))))

    @classmethod
    def from_config(cls, config: str | dict[str, Any]) -> HintNet:
        """A fresh net from a named architecture (`models/configs/hints-NAME.json`) or its dict."""
        return cls(model_config("hints", config) if isinstance(config, str) else config)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.text(tokens), dim=-1)


@functools.cache
def _tokenizer(context_length: int) -> SimpleTokenizer:
    return SimpleTokenizer(context_length=context_length)


def tokenize(texts: list[str], context_length: int) -> torch.Tensor:
    """(N, context_length) token ids (open_clip's BPE, lower-cased, truncated)."""
    return _tokenizer(context_length)(texts)


class HintEncoder:
    """The trained text tower: `embed(text)` → (D,) unit vector in the structure space."""

    def __init__(self, net: HintNet, meta: dict[str, Any] | None = None) -> None:
        self.net = net.eval()
        self.meta = meta or {}

    @property
    def scale(self) -> float:
        return float(self.net.logit_scale.detach().exp())

    @classmethod
    def from_pretrained(cls, folder: Path = HINTS_WEIGHTS) -> HintEncoder:
        meta = read_meta(folder, "hint encoder", "flatlay train hints")
        return cls(load_weights(folder, HintNet.from_config(meta["model_cfg"])), meta)

    def save_pretrained(self, folder: Path, extra: dict[str, Any] | None = None) -> None:
        save_weights(folder, self.net, {"architecture": "HintNet",
                                        "model_cfg": self.net.config, **(extra or {})})

    @torch.inference_mode()
    def embed(self, texts: list[str]) -> np.ndarray:
        """(N, D) float32 unit embeddings of the hints."""
        ctx = int(self.net.config["text_cfg"]["context_length"])
        return self.net(tokenize(texts, ctx)).numpy().astype(np.float32)


@functools.cache
def shipped_encoder() -> HintEncoder:
    """The shipped encoder, loaded once per process."""
    return HintEncoder.from_pretrained()


@dataclass
class HintEvidence:
    """What a hint says about the bank: probability per row (softmax of the scaled cosine
    similarities) and per category (the sum over its rows)."""

    text: str
    rows: np.ndarray
    categories: dict[str, float]
    embedding: np.ndarray  # (D,) the hint in the structure space
    ignored: tuple[str, ...] = ()  # words outside VOCABULARY, left out
    understood: bool = True  # False: no word that names anything; the evidence is flat

    @property
    def category(self) -> str:
        return max(self.categories, key=self.categories.__getitem__)


def hint_evidence(text: str, bank, encoder: HintEncoder | None = None) -> HintEvidence:  # noqa: ANN001
    """The hint's softmax over the bank's rows and its mass per category, from the words
    the tower knows (`read_hint`). A hint that names nothing it knows is flat evidence: every
    row and category alike, so the photo decides and nothing is restricted."""
    from models.garments import CATEGORIES

    known, ignored, named = read_hint(text)
    if not named:
        rows = np.full(len(bank.categories), 1.0 / max(1, len(bank.categories)))
        return HintEvidence(text=text, rows=rows,
                            categories={c: 1.0 / len(CATEGORIES) for c in CATEGORIES},
                            embedding=np.zeros(bank.embeddings.shape[1], np.float32),
                            ignored=ignored, understood=False)
    encoder = encoder or shipped_encoder()
    t = encoder.embed([known])[0]
    logits = encoder.scale * (bank.embeddings @ t)
    p = np.exp(logits - logits.max())
    p /= p.sum()
    cats = np.asarray(bank.categories)
    mass = {c: float(p[cats == c].sum()) for c in CATEGORIES}
    return HintEvidence(text=text, rows=p, categories=mass, embedding=t, ignored=ignored)


def combine_categories(photo: dict[str, float], hint: HintEvidence,
                       weight: float = HINT_WEIGHT,
                       smoothing: float = HINT_SMOOTHING) -> dict[str, float]:
    """The photo's category posterior times the hint's mass per category (to `weight`),
    the latter mixed with `smoothing` of a uniform belief, normalised."""
    n = len(photo)
    log_p = {c: np.log(photo[c] + 1e-6) + weight * np.log(
        (1 - smoothing) * hint.categories.get(c, 0.0) + smoothing / n + 1e-6) for c in photo}
    top = max(log_p.values())
    p = {c: float(np.exp(v - top)) for c, v in log_p.items()}
    total = sum(p.values())
    return {c: v / total for c, v in p.items()}


def restrict_rows(evidence: HintEvidence, categories: list[str] | np.ndarray, category: str,
                  minimum: int) -> np.ndarray:
    """The rows of `category` the hint does not speak against: those with at least half the
    category's average hint probability (all of them when the hint says nothing beyond the
    category, or when it is about another category: the photo won, and the hint's preferences
    inside a category it did not mean are noise), never fewer than `minimum` (the most
    probable)."""
    rows = np.flatnonzero(np.asarray(categories) == category)
    if len(rows) <= minimum or evidence.categories.get(category, 0.0) < RESTRICT_MASS:
        return rows
    p = evidence.rows[rows]
    keep = rows[p >= 0.5 * p.mean()]
    if len(keep) < minimum:
        keep = rows[np.argsort(-p, kind="stable")[:minimum]]
    return np.sort(keep)


def reranked_query(query: np.ndarray, evidence: HintEvidence) -> np.ndarray:
    """The photo's query moved towards the hint (their normalised sum): the re-rank variant
    of the fusion, against `restrict_rows`."""
    q = np.asarray(query, np.float32) + evidence.embedding
    return (q / (np.linalg.norm(q) + 1e-9)).astype(np.float32)


def hint_outcome(evidence: HintEvidence, photo: dict[str, float], decided: str
                 ) -> dict[str, Any]:
    """What the status says about a hint: the category it points to, the photo's, the one
    decided, and which won with the two beliefs."""
    photo_top = max(photo, key=photo.__getitem__)
    unread = f"; words not read: {', '.join(evidence.ignored)}" if evidence.ignored else ""
    if not evidence.understood:
        return {"text": evidence.text, "category": None, "confidence": None,
                "photo_category": photo_top, "photo_confidence": round(photo[photo_top], 4),
                "decided": decided, "won": "photo", "ignored": list(evidence.ignored),
                "why": f"the hint names no garment or attribute this service reads, so the "
                       f"photo decided {decided}{unread}"}
    hinted = evidence.category
    if hinted == photo_top:
        won, why = "both", f"the hint and the photo agree on {decided}"
    elif decided == hinted:
        won = "hint"
        why = (f"the hint ({hinted}, {evidence.categories[hinted]:.2f}) outweighed the photo "
               f"({photo_top}, {photo[photo_top]:.2f})")
    else:
        won = "photo"
        why = (f"the photo ({photo_top}, {photo[photo_top]:.2f}) outweighed the hint "
               f"({hinted}, {evidence.categories[hinted]:.2f})")
    return {"text": evidence.text, "category": hinted,
            "confidence": round(evidence.categories[hinted], 4), "photo_category": photo_top,
            "photo_confidence": round(photo[photo_top], 4), "decided": decided, "won": won,
            "ignored": list(evidence.ignored), "why": why + unread}
