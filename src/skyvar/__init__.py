"""skyvar: GPU-first deep learning for time-domain astronomy.

Conventions used everywhere (see DESIGN.md):
- pixel coordinates are 0-indexed, the centre of the first pixel is (0.0, 0.0), x runs along columns;
- magnitudes are AB with the frame's zero point ``ZP`` (the magnitude that gives 1 e-/s);
- fluxes are electrons integrated over the exposure unless a name says otherwise;
- times are MJD (mid-exposure) unless a name says otherwise.
"""

__version__ = "0.1.0"
