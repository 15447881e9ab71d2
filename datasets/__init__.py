"""imgsim_datasets: pair-set builders and the real photos installed packages ship.

Installed as `imgsim_datasets` (setuptools maps it to this folder). Used by the lab, the tests
and int8 calibration; the client never imports it.
"""
