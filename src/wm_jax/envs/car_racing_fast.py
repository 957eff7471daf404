"""CarRacing-v3 with the same pixels, drawn about three times faster.

Stock `CarRacing` spends almost all of a step drawing: every frame it rotates all ~400 grass
squares and ~300 road tiles vertex by vertex with `pygame.math.Vector2.rotate_rad`, tests each
against the screen in Python, and draws the few dozen that pass. `FastCarRacing` keeps those
vertices as NumPy arrays, built once per track, and transforms and culls them all at once with
the same float64 operations in the same order. Every draw call that can change a pixel of the
observation is then made as stock makes it (same pygame function, order, colour and float
coordinates). What is left out changes no pixel, by construction:

- polygons wholly outside the surface, or under the dashboard that `_render_indicators` paints
  black over the bottom rows after the flip;
- the scan conversion of the background square when it covers the whole shown surface (a
  `fill` with the same colour instead);
- a new font per frame (one cached font), and new full-size surfaces per frame (two reused).

`tests/test_car_racing_fast.py` checks observations, rewards and flags against stock, step by
step, with `np.array_equal`.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import gymnasium as gym
import numpy as np
import pygame
from gymnasium.envs.box2d.car_racing import (
    GRASS_DIM,
    MAX_SHAPE_DIM,
    PLAYFIELD,
    SCALE,
    STATE_H,
    STATE_W,
    WINDOW_H,
    WINDOW_W,
    ZOOM,
    CarRacing,
)
from pygame import gfxdraw

FAST_CAR_RACING_ID = "wm_jax/FastCarRacing-v3"

# Cull box of stock `_draw_colored_polygon`: a polygon is drawn if any vertex lies inside it.
_CULL_X_MIN, _CULL_X_MAX = -MAX_SHAPE_DIM, WINDOW_W + MAX_SHAPE_DIM
_CULL_Y_MIN, _CULL_Y_MAX = -MAX_SHAPE_DIM, WINDOW_H + MAX_SHAPE_DIM
# A polygon whose vertices all lie more than this many pixels outside the surface draws nothing
# on it: gfxdraw truncates coordinates towards zero and antialiased edges spread by one pixel.
_OFFSCREEN_MARGIN = 8.0
# Stock `_render_indicators` starts by painting the bottom 5/40 of the flipped surface black, so
# the road drawn in the top rows of the unflipped surface never shows: rows [0, _FIRST_SHOWN_ROW)
# before the flip, [_ROWS_SHOWN, WINDOW_H) after it.
_ROWS_SHOWN = int(WINDOW_H - 5 * WINDOW_H / 40.0)  # 700
_FIRST_SHOWN_ROW = WINDOW_H - _ROWS_SHOWN  # 100
# Below this, gfxdraw's Sint16 vertices and int32 scanline arithmetic cannot overflow.
_MAX_FILL_COORD = 16000.0

# One pygame font per process, dropped by pygame.quit(): stock builds a new Font each frame and
# so re-rasterises every glyph, a large share of a fast frame. The cached one renders the same.
_font_cache: dict[str, pygame.font.Font] = {}


def _clear_font_cache() -> None:
    _font_cache.clear()


def _reward_font(font_was_initialised: bool) -> pygame.font.Font:
    """The 42-pt default font stock `_render` uses, cached while pygame.font stays initialised."""
    if not font_was_initialised:
        _font_cache.clear()
    font = _font_cache.get("reward")
    if font is None:
        font = pygame.font.Font(pygame.font.get_default_font(), 42)
        _font_cache["reward"] = font
        pygame.register_quit(_clear_font_cache)
    return font


def _grass_vertices() -> np.ndarray:
    """Grass squares exactly as stock `_render_road` lists them.

    Returns:
        (400, 4, 2) float64 world coordinates, in stock drawing order.
    """
    grass = []
    for x in range(-20, 20, 2):
        for y in range(-20, 20, 2):
            grass.append(
                [
                    (GRASS_DIM * x + GRASS_DIM, GRASS_DIM * y + 0),
                    (GRASS_DIM * x + 0, GRASS_DIM * y + 0),
                    (GRASS_DIM * x + 0, GRASS_DIM * y + GRASS_DIM),
                    (GRASS_DIM * x + GRASS_DIM, GRASS_DIM * y + GRASS_DIM),
                ]
            )
    return np.array(grass, dtype=np.float64)


class _Polygons(NamedTuple):
    """Quadrilaterals in world coordinates, with bounding circles for a quick first cull."""

    vertices: np.ndarray  # (P, 4, 2) float64
    centres: np.ndarray  # (P, 2) vertex means
    radii: np.ndarray  # (P,) largest centre-to-vertex distance


def _polygons(vertices: np.ndarray) -> _Polygons:
    centres = vertices.mean(axis=1)
    radii = np.linalg.norm(vertices - centres[:, None, :], axis=-1).max(axis=1)
    return _Polygons(vertices, centres, radii)


def _visible_screen_polygons(
    polygons: _Polygons,
    zoom: float,
    translation: tuple[float, float],
    cos_sin: tuple[float, float],
) -> tuple[np.ndarray, list]:
    """World polygons to screen coordinates, keeping those whose drawing changes pixels.

    Keeps a polygon if stock `_draw_colored_polygon` would draw it (some vertex in the cull box)
    and its bounding box reaches the surface: gfxdraw truncates coordinates to integers and
    touches pixels at most one past a polygon's vertices, so a polygon wholly beyond
    `_OFFSCREEN_MARGIN` draws nothing. Bounding circles first discard polygons far from the
    surface; the survivors' vertices go through stock arithmetic in float64 with no fused
    operations, `Vector2.rotate_rad`'s (c*x - s*y, s*x + c*y) then `coord * zoom + translation`,
    so the cull-box test and the coordinates handed to gfxdraw are stock's to the bit.

    Args:
        polygons: P world polygons.
        zoom: camera zoom.
        translation: screen offset added after zooming.
        cos_sin: the (cos, sin) pair pygame uses for this angle.

    Returns:
        Indices (V,) of the kept polygons, ascending, and their screen vertices as a list of
        V lists of 4 [x, y] Python floats.
    """
    c, s = cos_sin
    tx, ty = translation
    # Conservative: a vertex lies within radius * zoom of the centre (+1 px for rounding).
    reach = polygons.radii * zoom + (_OFFSCREEN_MARGIN + 1.0)
    centre_x = (c * polygons.centres[:, 0] - s * polygons.centres[:, 1]) * zoom + tx
    centre_y = (s * polygons.centres[:, 0] + c * polygons.centres[:, 1]) * zoom + ty
    near = np.flatnonzero(
        (centre_x >= -reach)
        & (centre_x <= WINDOW_W + reach)
        & (centre_y >= _FIRST_SHOWN_ROW - reach)
        & (centre_y <= WINDOW_H + reach)
    )

    vertices = polygons.vertices[near]
    x, y = vertices[..., 0], vertices[..., 1]
    screen_x = (c * x - s * y) * zoom + tx  # (N, 4)
    screen_y = (s * x + c * y) * zoom + ty
    in_cull_box = (
        (screen_x >= _CULL_X_MIN)
        & (screen_x <= _CULL_X_MAX)
        & (screen_y >= _CULL_Y_MIN)
        & (screen_y <= _CULL_Y_MAX)
    ).any(axis=1)
    reaches_surface = (
        (screen_x.max(axis=1) >= -_OFFSCREEN_MARGIN)
        & (screen_x.min(axis=1) <= WINDOW_W + _OFFSCREEN_MARGIN)
        & (screen_y.max(axis=1) >= _FIRST_SHOWN_ROW - _OFFSCREEN_MARGIN)
        & (screen_y.min(axis=1) <= WINDOW_H + _OFFSCREEN_MARGIN)
    )
    kept = np.flatnonzero(in_cull_box & reaches_surface)
    screen = np.stack([screen_x[kept], screen_y[kept]], axis=-1)  # (V, 4, 2)
    return near[kept], screen.tolist()


def _background_covers_surface(
    zoom: float, translation: tuple[float, float], cos_sin: tuple[float, float]
) -> bool:
    """Whether stock's background square fills every shown pixel of the surface.

    True when the shown rows of the surface, grown by `_OFFSCREEN_MARGIN`, lie inside the square
    shrunk by the same margin, and the square's corners stay well inside gfxdraw's Sint16
    coordinates. Then filling with the background colour gives the pixels drawing the square
    gives. Otherwise (the zoom-in of the first second, a car near the playfield's edge) stock
    draws it.
    """
    c, s = cos_sin
    half = PLAYFIELD * zoom - _OFFSCREEN_MARGIN
    corner = PLAYFIELD * zoom * (abs(c) + abs(s))  # largest offset of a corner from the centre
    if max(abs(translation[0]), abs(translation[1])) + corner > _MAX_FILL_COORD:
        return False
    for qx in (-1.0 - _OFFSCREEN_MARGIN, WINDOW_W + 1.0 + _OFFSCREEN_MARGIN):
        for qy in (_FIRST_SHOWN_ROW - 1.0 - _OFFSCREEN_MARGIN, WINDOW_H + 1.0 + _OFFSCREEN_MARGIN):
            dx, dy = qx - translation[0], qy - translation[1]
            # Surface corner in the square's own frame (inverse rotation).
            if abs(c * dx + s * dy) > half or abs(c * dy - s * dx) > half:
                return False
    return True


class FastCarRacing(CarRacing):
    """`CarRacing` whose observations equal stock ones pixel for pixel, computed faster.

    Same constructor, spaces, dynamics, rewards and render modes as
    `gymnasium.envs.box2d.car_racing.CarRacing`; only rendering differs in how, not in what.
    "human" and "rgb_array" frames go through stock `_render` with the faster road drawing.
    """

    def __init__(
        self,
        render_mode: str | None = None,
        verbose: bool = False,
        lap_complete_percent: float = 0.95,
        domain_randomize: bool = False,
        continuous: bool = True,
    ):
        super().__init__(
            render_mode=render_mode,
            verbose=verbose,
            lap_complete_percent=lap_complete_percent,
            domain_randomize=domain_randomize,
            continuous=continuous,
        )
        self._grass_vertices = _grass_vertices()  # (400, 4, 2)
        # Grass then road polygons, the order stock draws them in: 400 + R.
        self._world_polygons = _polygons(self._grass_vertices)
        self._road_colors: list = []  # R tile colours
        self._surfaces: tuple[pygame.Surface, pygame.Surface] | None = None

    def _create_track(self) -> bool:
        success = super()._create_track()
        if success:
            # Tile colours are arrays that FrictionDetector recolours in place on contact, so
            # keep references and read them at draw time, as stock does.
            road = np.array([poly for poly, _ in self.road_poly], dtype=np.float64)
            self._world_polygons = _polygons(np.concatenate([self._grass_vertices, road]))
            self._road_colors = [color for _, color in self.road_poly]
        return success

    def _render_road(self, zoom, translation, angle):
        # Rotating (1, 0) returns pygame's own (cos, sin), its 0/90/180/270 degree special
        # cases included, so the vectorised rotation below matches `rotate_rad` bit for bit.
        cos_sin = tuple(pygame.math.Vector2(1.0, 0.0).rotate_rad(angle))

        if _background_covers_surface(zoom, translation, cos_sin):
            # Stock scan-converts a ~10^4-pixel square here; its outcome is a filled surface
            # (the rows the dashboard hides are skipped).
            self.surf.fill(self.bg_color, (0, _FIRST_SHOWN_ROW, WINDOW_W, _ROWS_SHOWN))
        else:
            # A reused surface must start black, as stock's fresh one does.
            self.surf.fill((0, 0, 0))
            bounds = PLAYFIELD
            field = [(bounds, bounds), (bounds, -bounds), (-bounds, -bounds), (-bounds, bounds)]
            self._draw_colored_polygon(
                self.surf, field, self.bg_color, zoom, translation, angle, clip=False
            )

        kept, polygons = _visible_screen_polygons(self._world_polygons, zoom, translation, cos_sin)
        num_grass = len(self._grass_vertices)
        for index, poly in zip(kept.tolist(), polygons, strict=True):
            if index < num_grass:
                color = self.grass_color
            else:
                color = [int(c) for c in self._road_colors[index - num_grass]]
            gfxdraw.aapolygon(self.surf, poly, color)
            gfxdraw.filled_polygon(self.surf, poly, color)

    def _reusable_surfaces(self) -> tuple[pygame.Surface, pygame.Surface] | None:
        """Road and flipped surfaces kept between frames; None where stock needs fresh ones.

        Reuse changes no shown pixel: `_render_road` overwrites or clears every shown pixel of
        the road surface and the flip every shown pixel of the other. Without a display,
        `pygame.Surface` always has the same 32-bit format; with one it may follow the display's.
        """
        if pygame.display.get_surface() is not None:
            return None
        if self._surfaces is None:
            self._surfaces = (
                pygame.Surface((WINDOW_W, WINDOW_H)),
                pygame.Surface((WINDOW_W, WINDOW_H)),
            )
        return self._surfaces

    def _render(self, mode: str):
        if mode != "state_pixels":
            # human / rgb_array: stock path (which still uses the fast `_render_road`).
            return super()._render(mode)

        # Stock `_render` for "state_pixels", with the reward font cached.
        font_was_initialised = pygame.font.get_init()
        pygame.font.init()
        if self.clock is None:
            self.clock = pygame.time.Clock()
        if "t" not in self.__dict__:
            return None  # reset() not called yet

        surfaces = self._reusable_surfaces()
        self.surf = surfaces[0] if surfaces else pygame.Surface((WINDOW_W, WINDOW_H))

        assert self.car is not None
        angle = -self.car.hull.angle
        # Animating first second zoom.
        zoom = 0.1 * SCALE * max(1 - self.t, 0) + ZOOM * SCALE * min(self.t, 1)
        scroll_x = -(self.car.hull.position[0]) * zoom
        scroll_y = -(self.car.hull.position[1]) * zoom
        trans = pygame.math.Vector2((scroll_x, scroll_y)).rotate_rad(angle)
        trans = (WINDOW_W / 2 + trans[0], WINDOW_H / 4 + trans[1])

        self._render_road(zoom, trans, angle)
        self.car.draw(self.surf, zoom, trans, angle, False)

        if surfaces:
            # pygame.transform.flip(self.surf, False, True) without allocating a new surface;
            # the rows the dashboard will cover keep whatever they held.
            flipped = surfaces[1]
            np.copyto(
                pygame.surfarray.pixels2d(flipped)[:, :_ROWS_SHOWN],
                pygame.surfarray.pixels2d(self.surf)[:, : _FIRST_SHOWN_ROW - 1 : -1],
            )
            self.surf = flipped
        else:
            self.surf = pygame.transform.flip(self.surf, False, True)

        self._render_indicators(WINDOW_W, WINDOW_H)

        font = _reward_font(font_was_initialised)
        text = font.render(f"{self.reward:04}", True, (255, 255, 255), (0, 0, 0))
        text_rect = text.get_rect()
        text_rect.center = (60, WINDOW_H - WINDOW_H * 2.5 / 40.0)
        self.surf.blit(text, text_rect)

        return self._create_image_array(self.surf, (STATE_W, STATE_H))


def make_fast_car_racing(**kwargs) -> gym.Env:
    """`gymnasium.make("CarRacing-v3", **kwargs)` with `FastCarRacing` inside.

    The same spec (max_episode_steps=1000, reward_threshold=900) and therefore the same
    wrappers: PassiveEnvChecker, OrderEnforcing, TimeLimit(1000).
    """
    spec = dataclasses.replace(
        gym.spec("CarRacing-v3"),
        id=FAST_CAR_RACING_ID,
        entry_point=FastCarRacing,
        kwargs={},
    )
    return gym.make(spec, **kwargs)


__all__ = ["FAST_CAR_RACING_ID", "FastCarRacing", "make_fast_car_racing"]
