"""Batches: `driver.py` (`stylize_many`: items, manifest, resume, the local worker pool),
`ray_pool.py` (the same on a Ray cluster, imported only for --ray), `frames.py` (video frames)."""
