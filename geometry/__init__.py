"""Geometry both the stages and the trainers use: the FLAME head model and MediaPipe body-part
landmarks. Below ``stages/`` and ``trainers/``, above ``schemas/``; imports neither."""
