"""ConversationDataset: records files -> tokenised, image-processed training items, lazily.

Records are read and validated up front (a bad record stops the run with its id named); images
are only opened in `__getitem__`. An item whose image is missing, corrupt or too large, or whose
text cannot be kept within max_length, comes back as None (the Collator drops it) and is counted.

With a tiled encoder whose tokens vary per image (docs/tiling.md), each `<image>` is expanded
with its own image's count, so the images (or, without decoding, their headers' sizes) are read
before the text is tokenised.

The skip counts live in a small shared-memory tensor (one status code per record), so skips found
inside DataLoader worker processes are visible in the main process as `dataset.skipped` and
`dataset.skipped_ids`. Each record counts once, however many epochs see it.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch.utils.data import Dataset

from polyvis.data.images import DEFAULT_MAX_PIXELS, ImageError, image_hash, load_image_and_hash
from polyvis.data.records import read_records, record_image_paths
from polyvis.data.template import encode_conversation
from polyvis.errors import DataError

logger = logging.getLogger(__name__)

# Why a record was skipped; status code = index + 1 (0: fine or not seen yet).
SKIP_REASONS = ("missing", "corrupt", "too_large", "too_long")
_TRUNCATED = len(SKIP_REASONS) + 1  # kept, but cut in the text after its last image


class ConversationDataset(Dataset):
    """Records files -> items {id, input_ids, labels, pixel_values, image_hashes} (or None).

    files: JSON / JSONL records files. Image paths are relative to each file's folder, or to
        `image_root` when given (absolute paths are used as they are).
    max_length: token budget; longer records are truncated after their last image block when an
        answer token survives, else skipped as "too_long".
    max_pixels: images declaring more pixels are refused ("too_large", decompression bombs).
    template: a chat template (jinja text) instead of the tokenizer's own.
    decode_images: False reads and hashes image files but neither decodes nor preprocesses them
        (items then carry no pixels: training from the feature cache needs only the hashes).
    image_hashes: without decoding, known hashes by resolved image path (the feature cache's
        `path_hashes`, taken when it was filled): those files are not read again.
    """

    def __init__(
        self,
        files: str | Path | Iterable[str | Path],
        processor: Any,
        max_length: int = 512,
        image_root: str | Path | None = None,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        template: str | None = None,
        decode_images: bool = True,
        image_hashes: Mapping[Path, str] | None = None,
    ):
        files = [files] if isinstance(files, str | Path) else list(files)
        if not files:
            raise DataError("ConversationDataset: no records files given")
        self.processor = processor
        self.max_length = int(max_length)
        self.max_pixels = int(max_pixels)
        self.template = template
        self.decode_images = bool(decode_images)
        self.image_hashes = image_hashes if image_hashes is not None else {}
        self.records: list[dict[str, Any]] = []
        self._roots: list[Path] = []  # one per file; _file_of[i] points into it
        self._file_of: list[int] = []
        first_seen: dict[Any, Path] = {}
        for k, f in enumerate(files):
            f = Path(f)
            self._roots.append(Path(image_root) if image_root is not None else f.parent)
            for rec in read_records(f):
                if rec["id"] in first_seen:
                    raise DataError(
                        f"{f}: record id {rec['id']!r} is also in {first_seen[rec['id']]}"
                    )
                first_seen[rec["id"]] = f
                self.records.append(rec)
                self._file_of.append(k)
        self._status = torch.zeros(len(self.records), dtype=torch.int8).share_memory_()
        self._lengths: list[int] | None = None
        k = getattr(processor, "num_slots", len(processor.encoder_names))
        h = max(s[0] for s in processor.image_sizes.values())
        w = max(s[1] for s in processor.image_sizes.values())
        self._empty_pixels = torch.zeros(0, k, 3, h, w)

    def __len__(self) -> int:
        return len(self.records)

    def image_paths(self, i: int) -> list[Path]:
        """Record i's image files, resolved."""
        return record_image_paths(self.records[i], self._roots[self._file_of[i]])

    @property
    def _tokens_vary(self) -> bool:
        return bool(getattr(self.processor, "tokens_vary", False))

    def __getitem__(self, i: int) -> dict[str, Any] | None:
        rec = self.records[i]
        loaded = None
        text_processor = self.processor
        if self._tokens_vary:  # the images' sizes decide their token counts
            loaded = self._load(i)
            if loaded is None:
                return None
            text_processor = self.processor.for_images(loaded[2])
        enc = encode_conversation(rec, text_processor, self.max_length, self.template)
        if enc is None:
            return self._skip(
                i, "too_long", f"no answer token fits in max_length={self.max_length}"
            )
        loaded = loaded or self._load(i)
        if loaded is None:
            return None
        images, hashes, _ = loaded
        pixels = bool(images) and self.decode_images
        pixel_values = self.processor.preprocess_images(images) if pixels else self._empty_pixels
        if enc["truncated"]:
            self._status[i] = _TRUNCATED
        return {
            "id": rec["id"],
            "input_ids": torch.tensor(enc["input_ids"], dtype=torch.long),
            "labels": torch.tensor(enc["labels"], dtype=torch.long),
            "pixel_values": pixel_values,
            "image_hashes": hashes,
        }

    def _load(self, i: int) -> tuple[list, list[str], list[tuple[int, int]]] | None:
        """Record i's images (None each without decoding), hashes and (height, width) sizes;
        None when one cannot be used (the record is then skipped)."""
        images, hashes, sizes = [], [], []
        for path in self.image_paths(i):
            try:
                if self.decode_images:
                    image, digest = load_image_and_hash(path, self.max_pixels)
                    size = (image.height, image.width)
                else:
                    image = None
                    digest = self.image_hashes.get(path) or image_hash(path)
                    size = header_size(path) if self._tokens_vary else (0, 0)
            except ImageError as err:
                return self._skip(i, err.reason, str(err))
            images.append(image)
            hashes.append(digest)
            sizes.append(size)
        return images, hashes, sizes

    def _skip(self, i: int, reason: str, message: str) -> None:
        code = SKIP_REASONS.index(reason) + 1
        if int(self._status[i]) != code:  # warn once per record, not once per epoch
            logger.warning("skipping record %s (%s): %s", self.records[i]["id"], reason, message)
            self._status[i] = code
        return None

    # -- accounting ------------------------------------------------------------------------------
    @property
    def skipped(self) -> Counter:
        """Skipped records by reason (missing, corrupt, too_large, too_long)."""
        codes = self._status.tolist()
        return Counter(SKIP_REASONS[c - 1] for c in codes if 0 < c <= len(SKIP_REASONS))

    @property
    def skipped_ids(self) -> list[Any]:
        """Ids of the skipped records, in dataset order."""
        codes = self._status.tolist()
        return [self.records[i]["id"] for i, c in enumerate(codes) if 0 < c <= len(SKIP_REASONS)]

    @property
    def truncated_ids(self) -> list[Any]:
        """Ids of the records kept but cut to max_length (in text after their last image)."""
        return [
            self.records[i]["id"] for i, c in enumerate(self._status.tolist()) if c == _TRUNCATED
        ]

    def lengths(self) -> list[int]:
        """Token length of every item (0 for records too long to keep); decodes no image (a
        model whose tokens vary per image reads each image's size from its header).

        Tokenises every record once (cached): what length-grouped sampling needs. Records that
        cannot be kept are counted as "too_long" here already.
        """
        if self._lengths is None:
            lengths = []
            for i, rec in enumerate(self.records):
                text_processor = self._text_processor(i)
                if text_processor is None:
                    lengths.append(0)
                    continue
                enc = encode_conversation(rec, text_processor, self.max_length, self.template)
                if enc is None:
                    self._skip(
                        i, "too_long", f"no answer token fits in max_length={self.max_length}"
                    )
                elif enc["truncated"] and int(self._status[i]) == 0:
                    self._status[i] = _TRUNCATED
                lengths.append(0 if enc is None else len(enc["input_ids"]))
            self._lengths = lengths
        return list(self._lengths)

    def _text_processor(self, i: int) -> Any:
        """The processor that expands record i's `<image>` markers; None when an image of a
        tiled record cannot be read (the record is skipped)."""
        if not self._tokens_vary:
            return self.processor
        try:
            sizes = [header_size(p) for p in self.image_paths(i)]
        except ImageError as err:
            return self._skip(i, err.reason, str(err))
        return self.processor.for_images(sizes)


_ORIENTATION = 0x0112  # EXIF tag; values 5 to 8 turn the image by 90 degrees


def header_size(path: Path) -> tuple[int, int]:
    """(height, width) of an image as load_image returns it (EXIF rotation applied), read from
    its header without decoding the pixels."""
    try:
        with Image.open(path) as im:
            width, height = im.size
            if im.getexif().get(_ORIENTATION) in (5, 6, 7, 8):
                width, height = height, width
    except (FileNotFoundError, IsADirectoryError, PermissionError) as err:  # as load_image counts
        raise ImageError(path, "missing", f"cannot read image ({err.strerror or err})") from None
    except Image.DecompressionBombError as err:
        raise ImageError(path, "too_large", f"refused by PIL: {err}") from None
    except Exception as err:  # PIL raises many types for broken files
        detail = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise ImageError(path, "corrupt", f"cannot read image header ({detail})") from None
    return height, width
