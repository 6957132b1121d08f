"""The speech model shipped inside the package: ``conformer_hybrid_xs`` trained by
``recipes/asr/conformer_hybrid_xs_espeak.yaml`` on the bundled espeak-ng corpus only, so that
``convformer asr transcribe FILE`` works on a fresh install without ``--weights``. ``SHIPPED_CARD`` (a JSON
file beside the weights) records how it was trained and what it measured (``scripts/ship_speech_model.py``)."""
from __future__ import annotations

import json
from pathlib import Path

from convformer.errors import ConvformerError

HERE = Path(__file__).resolve().parent
SHIPPED = HERE / "conformer_hybrid_xs_espeak.safetensors"
SHIPPED_CARD = HERE / "conformer_hybrid_xs_espeak.json"


def shipped_weights() -> str:
    """Path of the shipped speech model's weights (an error naming the fix if the install lacks them)."""
    if not SHIPPED.is_file():
        raise ConvformerError(f"the shipped speech model {SHIPPED.name} is missing from this install; pass "
                              "--weights FILE (from `convformer asr train`) or reinstall convformer")
    return str(SHIPPED)


def shipped_card() -> dict:
    """What the shipped model measured (empty if the card is missing)."""
    return json.loads(SHIPPED_CARD.read_text()) if SHIPPED_CARD.is_file() else {}
