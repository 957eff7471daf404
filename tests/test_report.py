"""The run report's pictures."""

import numpy as np
import pytest
from PIL import Image

from wm_jax.pipeline import report


def _frame_delays_ms(path) -> list[int]:
    with Image.open(path) as gif:
        delays = []
        for index in range(gif.n_frames):
            gif.seek(index)
            delays.append(gif.info["duration"])
        return delays


@pytest.mark.parametrize("fps", [report.GIF_FPS, 10, 24])
def test_gif_plays_at_the_intended_speed(tmp_path, fps):
    frames = np.zeros((30, 16, 16, 3), np.uint8)
    frames[:, :, :, 0] = np.arange(30)[:, None, None] * 8  # all distinct: none merged
    path = tmp_path / "clip.gif"
    report.write_gif(path, frames, fps)
    delays = _frame_delays_ms(path)
    assert len(delays) == 30
    assert all(abs(delay - 1000 / fps) < 10 for delay in delays), delays  # was 0: no delay
    assert sum(delays) == pytest.approx(30 * 1000 / fps, abs=10)  # the clip lasts T / fps
    with Image.open(path) as gif:
        assert gif.info["loop"] == 0  # for ever
    with pytest.raises(ValueError, match="50 fps"):
        report.write_gif(path, frames, 60)
