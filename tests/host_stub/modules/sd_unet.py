"""Stand-in of `modules.sd_unet`: no alternative UNet (TensorRT, ...) is active unless a test sets one."""

current_unet = None
