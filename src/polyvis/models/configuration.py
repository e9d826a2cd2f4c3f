"""PolyVisConfig: the configuration of a polyvis model (model_type "polyvis"), what config.json
holds: the encoder entries, the fusion and adapter options, the LM's config and the image token
ids. The model itself is polyvis.models.modeling."""

from __future__ import annotations

from transformers import AutoConfig
from transformers.configuration_utils import PreTrainedConfig, SubConfigSpec


class PolyVisConfig(PreTrainedConfig):
    """Configuration of a PolyVis model.

    encoders: one dict per encoder: name, config (the backbone's transformers config as a dict),
        layers (absolute hidden-state indices), num_prefix_tokens, grid, dim, image_size,
        interpolate_pos_encoding, and `tiling` ({grids, thumbnail}) only for a tiled encoder.
        A detector's entry (models/detector.py) adds kind: detector, embed_boxes and, with boxes,
        box_features and class_scores; its grid is (1, queries).
        Written by `polyvis.build_model`, which probes each backbone.
    fusion / adapter: `{"type": name, ...options}` dicts of the fusion and adapter registries.
    text_config: the causal LM's config.
    image_token_id / image_start_token_id / image_end_token_id: ids of `<image>` (placeholder
        replaced by visual features), `<img_start>` and `<img_end>` (own trainable embeddings).
    image_seq_length: visual tokens per image (the adapter's output length); with tiling, per
        unit, an image having one unit per view for most fusions (docs/tiling.md).
    """

    model_type = "polyvis"
    sub_configs_defaults = {
        "text_config": SubConfigSpec(config_class=AutoConfig, model_type="qwen2"),
    }

    text_config: dict | PreTrainedConfig | None = None
    encoders: list | None = None
    fusion: dict | None = None
    adapter: dict | None = None
    image_token_id: int = 0
    image_start_token_id: int = 0
    image_end_token_id: int = 0
    image_seq_length: int = 0
    tie_word_embeddings: bool = False

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        if self.encoders is None:
            self.encoders = []
        if self.fusion is None:
            self.fusion = {"type": "concat-channel"}
        if self.adapter is None:
            self.adapter = {"type": "mlp", "depth": 2}
        if not self.tie_word_embeddings and getattr(self.text_config, "tie_word_embeddings", False):
            self.tie_word_embeddings = True
