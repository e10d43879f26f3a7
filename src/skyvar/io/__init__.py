from skyvar.io.fits import Frame, FrameError, read_frame, write_frame

__all__ = ["Frame", "FrameError", "read_frame", "write_frame"]
