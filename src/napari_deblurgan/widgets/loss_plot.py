"""Live plot of a training run: generator and critic losses per step, validation PSNR per validation.

A matplotlib ``FigureCanvasQTAgg`` embedded in the Finetune widget. Points are appended from the GUI
thread (the widget receives training events through a napari ``thread_worker``); redraws are coalesced
with ``draw_idle`` so that a fast run does not spend its time drawing.
"""

from __future__ import annotations

import math

from qtpy.QtWidgets import QSizePolicy, QVBoxLayout, QWidget


class LossPlot(QWidget):
    """Three stacked axes sharing the step axis: generator loss, critic loss and validation PSNR.

    Generator and critic losses get separate axes because a WGAN critic loss lives on a very different
    scale (and sign) than the generator's content loss; on one axis one of them would be a flat line.
    """

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        # matplotlib is imported here, when the Finetune widget is built, not when napari imports the plugin
        from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
        from matplotlib.figure import Figure

        self.figure = Figure(figsize=(4.0, 3.6), dpi=80, layout="constrained")
        self.canvas = FigureCanvasQTAgg(self.figure)
        self.canvas.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Expanding)
        self.canvas.setMinimumHeight(260)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.canvas)
        self.ax_loss, self.ax_critic, self.ax_psnr = self.figure.subplots(3, 1, sharex=True)
        self.steps: list[int] = []
        self.generator_loss: list[float] = []
        self.critic_loss: list[float] = []
        self.val_steps: list[int] = []
        self.val_psnr: list[float] = []
        (self._g_line,) = self.ax_loss.plot([], [], label="generator", color="tab:blue", lw=1)
        (self._c_line,) = self.ax_critic.plot([], [], label="critic", color="tab:orange", lw=1)
        (self._p_line,) = self.ax_psnr.plot([], [], "o-", label="validation PSNR", color="tab:green", ms=3)
        self.ax_loss.set_ylabel("generator\nloss", fontsize=8)
        self.ax_critic.set_ylabel("critic\nloss", fontsize=8)
        self.ax_psnr.set_ylabel("val. PSNR\n(dB)", fontsize=8)
        self.ax_psnr.set_xlabel("step")
        self.canvas.draw_idle()

    def clear(self) -> None:
        """Forget all points (a new run starts; a resumed run keeps its history)."""
        for series in (self.steps, self.generator_loss, self.critic_loss, self.val_steps, self.val_psnr):
            series.clear()
        self._redraw()

    def add_step(self, step: int, generator_loss: float | None, critic_loss: float | None) -> None:
        """Append one training step's losses (None or NaN for a loss the preset does not have)."""
        self.steps.append(int(step))
        self.generator_loss.append(_finite(generator_loss))
        self.critic_loss.append(_finite(critic_loss))
        self._redraw()

    def add_validation(self, step: int, psnr: float | None) -> None:
        """Append one validation PSNR value."""
        self.val_steps.append(int(step))
        self.val_psnr.append(_finite(psnr))
        self._redraw()

    def _redraw(self) -> None:
        self._g_line.set_data(self.steps, self.generator_loss)
        self._c_line.set_data(self.steps, self.critic_loss)
        self._p_line.set_data(self.val_steps, self.val_psnr)
        for ax in (self.ax_loss, self.ax_critic, self.ax_psnr):
            ax.relim()
            ax.autoscale_view()
        self.canvas.draw_idle()


def _finite(value: float | None) -> float:
    """``value`` as a float, NaN for None (matplotlib leaves a gap)."""
    if value is None:
        return math.nan
    value = float(value)
    return value if math.isfinite(value) else math.nan
