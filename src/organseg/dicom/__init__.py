"""DICOM objects: the source series a label map was predicted on, and what organseg answers with.

Modules: source (the series' headers, matched slice by slice to the label map's grid),
contours (organ outlines per slice, and filling them back), seg (DICOM Segmentation),
rtstruct (RT Structure Set), ct_series (a CT volume written as a DICOM series), outputs
(the output types `organseg predict` writes).
"""
