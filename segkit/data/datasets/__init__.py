"""One module per dataset layout; :data:`segkit.data.DATASETS` maps names to these classes."""

from segkit.data.datasets.cityscapes import Cityscapes
from segkit.data.datasets.folder import FolderDataset
from segkit.data.datasets.massroads import MassachusettsRoads
from segkit.data.datasets.shapes import ShapesDataset
from segkit.data.datasets.voc import VOCSegmentation

__all__ = ["Cityscapes", "FolderDataset", "MassachusettsRoads", "ShapesDataset", "VOCSegmentation"]
