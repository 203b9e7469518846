"""The scanner's dose: CTDIvol and exposure from image headers, dose structured reports, patient size (AAPM
Report 220 water-equivalent diameter) and SSDE. Imports ``quality``, ``io`` and the shared pieces only."""
