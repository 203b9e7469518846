"""The DICOM receiver's default limits, apart from the receiver so that the command line's help can name them
without importing the receiver (and the dose-report vocabulary it loads)."""

#: Images are refused (out of resources) while less than this is free on the storage's disk.
DEFAULT_MIN_FREE_MB = 1024.0
#: Simultaneous associations at most.
DEFAULT_MAX_ASSOCIATIONS = 10
#: An association silent this long (seconds) is closed.
DEFAULT_IDLE_TIMEOUT_S = 60.0
