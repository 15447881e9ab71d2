"""imgsim_lab: benchmarks, the study, the PDF report, the soak, fault injection and the server
launcher (`make bench|study|report|soak`). Needs the `[lab]` extra; only tests import it."""
