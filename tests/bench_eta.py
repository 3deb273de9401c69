"""How close the time left (core/run/eta.py) is to the truth on real runs.

    .venv/bin/python tests/bench_eta.py --model vgg16.onnx [--sizes 256 512] [--preset normal]
        [--photo coffee] [--style immunohistochemistry]

Per size: one run, the estimate at every evaluation against the time that was really left
(until `stylize` returned); printed: the run's time, each level's evaluations, the error at 10,
25, 50, 75 and 90 % of the run, and the median and largest error from 10 % on (while 5 % of the
run is left, as tests/test_eta.py measures it).
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--sizes", nargs="+", type=int, default=[256, 512])
    parser.add_argument("--preset", default="normal")
    parser.add_argument("--photo", default="coffee")
    parser.add_argument("--style", default="immunohistochemistry")
    args = parser.parse_args()

    import skimage.data

    from stylefu.core import Config, load_model, stylize
    from stylefu.core.run import eta

    model = load_model(args.model, "cpu")
    content, style = (np.asarray(getattr(skimage.data, n)(), np.float32)[..., :3] / 255
                      for n in (args.photo, args.style))
    for size in args.sizes:
        config = Config(size=size, preset=args.preset)
        timer, seen, levels = eta.TimeLeft(config), [], {}

        def callback(p, timer=timer, seen=seen, levels=levels):
            seen.append((time.perf_counter(), timer(p)))
            levels[p.level] = p.evaluation

        started = time.perf_counter()
        stylize(content, style, config=config, model=model, callback=callback)
        end = time.perf_counter()
        run = end - started
        points = [((when - started) / run, left / (end - when) - 1) for when, left in seen
                  if left is not None and end - when > 0]
        at = {mark: min(points, key=lambda p, m=mark: abs(p[0] - m))[1]
              for mark in (0.1, 0.25, 0.5, 0.75, 0.9)}
        errors = np.abs([e for f, e in points if 0.1 <= f <= 0.95])
        print(f"{size} px, {args.preset}: {run:.1f} s, evaluations per level "
              f"{list(levels.values())}; error of the time left at "
              + ", ".join(f"{100 * m:.0f} %: {100 * e:+.1f} %" for m, e in at.items())
              + f"; from 10 %: median {100 * np.median(errors):.1f} %, "
              f"largest {100 * errors.max():.1f} %", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
