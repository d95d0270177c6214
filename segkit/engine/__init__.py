"""Engine: the parts that wire models, data, losses and metrics together.

``inference`` holds the one inference function (whole image, sliding window, multi-scale and
flip) used by evaluation, prediction and validation during training.
"""
