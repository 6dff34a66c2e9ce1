"""Encoders: pretrained-asset preparation, the dual encoder (backbone + pooling + normalisation), export."""
