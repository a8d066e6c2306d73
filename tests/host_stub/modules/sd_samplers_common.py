"""Stand-in of `modules.sd_samplers_common`: the interrupt exception the CFG denoiser raises."""


class InterruptedException(BaseException):
    """A BaseException, as in the host, so `except Exception` does not catch an interrupt."""
