"""Stand-in of `modules.paths`; `host_stub.installed()` points both folders into a test's tmp dir."""

models_path = ""
extensions_dir = ""
