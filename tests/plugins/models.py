"""Model factories for the config tests: one follows the documented contract (`act` is a
zero-argument callable returning an activation module), one looks `act` up by name."""

from __future__ import annotations

import torch.nn as nn

ACTS = {"relu": nn.ReLU, "sigmoid": nn.Sigmoid}


def small_cnn(in_shape, num_classes, act, width=8):
    return nn.Sequential(nn.Conv2d(in_shape[0], width, 3, padding=1), act(), nn.Flatten(),
                         nn.Linear(width * in_shape[1] * in_shape[2], num_classes))


def by_name(in_shape, num_classes, act):
    return nn.Sequential(nn.Flatten(), nn.Linear(in_shape[0] * in_shape[1] * in_shape[2], num_classes), ACTS[act]())


def pairs(in_shape, num_classes, act):
    """Returns (logits, logits): not a model's output."""

    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(in_shape[0] * in_shape[1] * in_shape[2], num_classes)

        def forward(self, x):
            y = self.fc(x.flatten(1))
            return y, y

    return Twice()


def extra_logits(in_shape, num_classes, act):
    return nn.Sequential(nn.Flatten(), nn.Linear(in_shape[0] * in_shape[1] * in_shape[2], num_classes + 3))


def lazy_cnn(in_shape, num_classes, act):
    """Lazy layers: their shapes come from the first forward pass."""
    return nn.Sequential(nn.LazyConv2d(4, 3), act(), nn.MaxPool2d(2), nn.Flatten(), nn.LazyLinear(num_classes))


def pooled_to_one(in_shape, num_classes, act):
    """BatchNorm on a 1x1 map: trains on batches of two or more, fails on one image in training mode."""
    return nn.Sequential(nn.Conv2d(in_shape[0], 4, 3, padding=1), nn.AdaptiveAvgPool2d(1), nn.BatchNorm2d(4), act(),
                         nn.Flatten(), nn.Linear(4, num_classes))


def pooled_features_as_wide_as_the_image(in_shape, num_classes, act):
    """A convolution of 4 channels and a 2x2 pooling: the linear layer after them takes exactly
    as many features as the image has values, and still reads features, not pixels."""
    c, h, w = in_shape
    return nn.Sequential(nn.Conv2d(c, 4 * c, 3, padding=1), act(), nn.MaxPool2d(2), nn.Flatten(),
                         nn.Linear(4 * c * (h // 2) * (w // 2), num_classes))


def mlp_without_bias(in_shape, num_classes, act):
    return nn.Sequential(nn.Flatten(), nn.Linear(in_shape[0] * in_shape[1] * in_shape[2], 16, bias=False), act(),
                         nn.Linear(16, num_classes))


def hardsigmoid_cnn(in_shape, num_classes, act):
    """MobileNetV3's gate activation: PyTorch has no second derivative for it."""
    return nn.Sequential(nn.Conv2d(in_shape[0], 4, 3, padding=1), nn.Hardsigmoid(), nn.Flatten(),
                         nn.Linear(4 * in_shape[1] * in_shape[2], num_classes))


INSTANCE = nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 2))  # a model, not a factory


def no_arguments():
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 2))


class QuickstartNet(nn.Module):
    """Flower's quickstart-pytorch `Net` as its users write it: no arguments, its own input size
    (3x32x32) and classes (7 here, as the bundled photos have), max-pooling and ReLU."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 5)
        self.pool = nn.MaxPool2d(2, 2)
        self.conv2 = nn.Conv2d(6, 16, 5)
        self.fc1 = nn.Linear(16 * 5 * 5, 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, 7)

    def forward(self, x):
        x = self.pool(nn.functional.relu(self.conv1(x)))
        x = self.pool(nn.functional.relu(self.conv2(x)))
        x = x.view(-1, 16 * 5 * 5)
        x = nn.functional.relu(self.fc1(x))
        return self.fc3(nn.functional.relu(self.fc2(x)))


class NeedsDepth(nn.Module):
    def __init__(self, depth):
        super().__init__()
        self.fc = nn.Linear(3 * 32 * 32, depth)


def conv_head(in_shape, num_classes, act):
    """No Linear layer: a convolution to one map per class, averaged (a fully convolutional head)."""
    return nn.Sequential(nn.Conv2d(in_shape[0], num_classes, 3, padding=1), nn.AdaptiveAvgPool2d(1), nn.Flatten())
