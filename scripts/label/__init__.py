"""MONAI Label integration: the phase synthesiser as a MONAI Label inference task (see ``bundles/monailabel_app``)."""
