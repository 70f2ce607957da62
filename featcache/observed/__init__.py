"""Observed spectra in: the PFS pipeline's FITS products (pfsCoadd, pfsCalibrated, pfsObject, pfsSingle) read
as they are, put on a reference grid, labelled from a catalogue and written as a pfsspec file (`featcache
import`); the products written from pfsspec spectra (`featcache export`); and the simulation-to-observation
report of a head applied to observed features (`featcache transfer`).

May import: common, spectra (the pfsspec layout), cache and heads (transfer only).
"""

from ..common.lazy import lazy_exports

__getattr__, __dir__ = lazy_exports(__name__, {
    "MaskPlanes": "masks", "DEFAULT_REJECT": "masks",
    "read_product": "products", "PfsProduct": "products", "ObservedSpectrum": "products", "Target": "products",
    "describe_product": "describe",
    "vacuum_to_air": "wavelength", "air_to_vacuum": "wavelength", "wcs_wavelength": "wavelength",
    "rebin_matrix": "resample", "resample": "resample",
    "Reference": "grid", "load_reference": "grid", "GridOptions": "grid", "to_reference_grid": "grid",
    "read_catalogue": "catalogue", "join_labels": "catalogue", "JoinReport": "catalogue",
    "ImportOptions": "importer", "import_spectra": "importer", "read_provenance": "importer",
    "write_target_spectra": "writer", "write_fiber_array": "writer", "SpectrumToWrite": "writer",
    "ExportOptions": "writer", "export_pfsspec": "writer",
    "TransferOptions": "transfer", "transfer_report": "transfer",
})
