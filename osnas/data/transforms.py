"""Image transforms (torchvision): resize, flip, pad + random crop, colour jitter, erasing."""

from __future__ import annotations

from osnas.errors import OsnasError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def build_transforms(
    height: int = 256,
    width: int = 128,
    train: bool = True,
    flip: bool = True,
    pad_crop: bool = False,
    pad: int = 10,
    color_jitter: bool = False,
    brightness: float = 0.2,
    contrast: float = 0.15,
    saturation: float = 0.0,
    hue: float = 0.0,
    random_erasing: bool = False,
    erasing_prob: float = 0.5,
    mean=IMAGENET_MEAN,
    std=IMAGENET_STD,
):
    """PIL RGB image -> normalised float tensor (3, height, width).

    Train: resize, [flip], [pad + random crop], [colour jitter], to-tensor, normalise,
    [random erasing]. Test (train=False): resize, to-tensor, normalise.
    """
    import torchvision.transforms as T

    if height < 1 or width < 1:
        raise OsnasError(f"image size {height}x{width}: expected positive height and width")
    if len(mean) != 3 or len(std) != 3:
        raise OsnasError(f"mean/std: expected 3 values each, got {list(mean)}, {list(std)}")
    tf = [T.Resize((height, width))]
    if train:
        if flip:
            tf.append(T.RandomHorizontalFlip())
        if pad_crop and pad > 0:
            tf += [T.Pad(pad), T.RandomCrop((height, width))]
        if color_jitter and any(v > 0 for v in (brightness, contrast, saturation, hue)):
            tf.append(T.ColorJitter(brightness=brightness, contrast=contrast, saturation=saturation, hue=hue))
    tf += [T.ToTensor(), T.Normalize(mean=list(mean), std=list(std))]
    if train and random_erasing and erasing_prob > 0:
        tf.append(T.RandomErasing(p=erasing_prob, value=0))
    return T.Compose(tf)


def from_config(data_cfg, train: bool):
    """build_transforms from a `osnas.config.DataConfig`."""
    c = data_cfg
    return build_transforms(
        c.height, c.width, train=train, flip=c.flip, pad_crop=c.pad_crop, pad=c.pad, color_jitter=c.color_jitter,
        brightness=c.brightness, contrast=c.contrast, saturation=c.saturation, hue=c.hue,
        random_erasing=c.random_erasing, erasing_prob=c.erasing_prob, mean=c.mean, std=c.std,
    )
