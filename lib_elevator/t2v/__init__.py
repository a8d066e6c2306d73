"""Text-to-video backends, one file each, behind `lib_elevator.t2v.base.T2VBackend`."""
