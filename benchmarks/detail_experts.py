"""Build the detail world's experts and probe them beside the published ones (issue 18).

clip-nano and dino-nano trained as the default recipe trains them, on the `detail` family's
images (the scene's shapes with patterns and orientations; clip-nano on their captions, which
never name either) instead of the plain scene's; then `polyvis.nano.probes` on the probes'
images (scene and detail at seed 1, which no expert saw), each expert beside its
random-init twin and raw pixels. Cached like every expert (POLYVIS_CACHE); a rerun reuses them.

    python benchmarks/detail_experts.py --json detail-probes.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

DETAIL = {"clip-nano": {"families": ["detail"]}, "dino-nano": {"families": ["detail"]}}
DATA = {name: [{"families": ["detail"], "n": 3000}] for name in DETAIL}


def main() -> int:
    from polyvis.nano.experts import ensure_experts
    from polyvis.nano.probes import PROBE_DATA, run_probes

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", type=Path, help="write the probe table here too")
    parser.add_argument("--no-published", action="store_true", help="probe the detail experts only")
    args = parser.parse_args()
    names = ("clip-nano", "dino-nano")
    detail = ensure_experts(data=DATA, settings=DETAIL, names=names)
    experts = {f"{n} (detail)": detail[n] for n in names}
    if not args.no_published:
        published = ensure_experts(names=(*names, "vary-nano"))
        experts = {**{n: published[n] for n in published}, **experts}
    for name, path in experts.items():
        print(f"{name}: {path}", file=sys.stderr)
    from polyvis.data.synthetic.cache import ensure_synthetic

    # the shape probes only: the sign probes (mixed) read text, which neither change touches
    shapes = [ensure_synthetic(o) for o in PROBE_DATA if o["families"] != ["mixed"]]
    table = run_probes(experts, shapes, log=lambda line: print(line, file=sys.stderr))
    print(table.markdown())
    if args.json:
        args.json.write_text(json.dumps(table.to_json(), indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
