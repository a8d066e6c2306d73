"""VideoElevator: text-to-video sampled with a text-to-image model, refined by a text-to-video model.

Host-agnostic core (noise, filters, cross_frame, schedule, inversion, elevator), diffusers-based
model loading (t2i, loaders, t2v/), the standalone pipeline and CLI. Host adapters live in
sub-packages (webui/) and are the only modules that import the host's `modules.*`.
"""

__version__ = "0.1.0"
