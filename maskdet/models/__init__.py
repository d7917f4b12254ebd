"""Models: backbone families by name (the COMP6721 study's custom CNN, torchvision, timm), the LightningModule
that trains them (``MaskClassifier``, the config's ``_target_: maskdet.models.MaskClassifier``) and the
network alone for inference (``classifier.FaceClassifier``)."""


def __getattr__(name: str):
    # Lazy, so that inference (maskdet.models.classifier) loads without importing Lightning.
    if name == "MaskClassifier":
        from maskdet.models.module import MaskClassifier

        return MaskClassifier
    if name == "build_network":
        from maskdet.models.networks import build_network

        return build_network
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["MaskClassifier", "build_network"]
