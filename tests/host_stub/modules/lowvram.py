"""Stand-in of `modules.lowvram`: eviction only counts its calls."""

evictions = 0


def send_everything_to_cpu():
    global evictions
    evictions += 1


def is_needed(sd_model) -> bool:
    return bool(getattr(sd_model, "lowvram", False))
