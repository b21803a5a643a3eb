"""EDF, EDF+ and BDF files: a validating header parser and a lazy per-channel reader.

The header is parsed here (it is 256 bytes plus 256 per signal, fixed-width text) so that a broken
file gets a clear message before any library touches it, and so that channel listing never reads
signal data. Header fields are UTF-8 when they decode as such (software writes labels like
``EEG C4-Ä`` that way), else Latin-1. Samples are read with pyedflib, one channel at a time; a file
pyedflib refuses (non-ASCII labels, swapped digital limits, ...) is read straight from its data
records. Either way the header's linear scale is applied here, so odd limits are handled the same way
whatever reads the samples. Values come back in microvolts whatever the case of the file's unit
string (``uV``, ``UV``, ``µV``, ``mV``, ``V``).
"""

from __future__ import annotations

import datetime as dt
import logging
import os
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np

from sleepstage_cli.errors import InputError

log = logging.getLogger(__name__)

_ANNOTATION_LABELS = ("edf annotations", "bdf annotations")

_UV_PER_UNIT = {"uv": 1.0, "mv": 1e3, "v": 1e6, "nv": 1e-3, "kv": 1e9}


def unit_to_microvolts(unit: str) -> float | None:
    """Factor taking values in ``unit`` to microvolts, or None when the unit is not a voltage.

    Case-insensitive: DREAMS writes ``UV``, which means microvolts, not megavolts.
    """
    key = unit.strip().lower().replace("\u00b5", "u").replace("\u03bc", "u")
    return _UV_PER_UNIT.get(key)


@dataclass(frozen=True)
class SignalInfo:
    """One signal of an EDF header."""

    index: int
    label: str
    unit: str
    samples_per_record: int
    sampling_rate: float
    physical_min: float
    physical_max: float
    digital_min: int
    digital_max: int
    transducer: str = ""
    prefilter: str = ""


@dataclass(frozen=True)
class EdfHeader:
    """What the header of an EDF/EDF+/BDF file says, checked against the file's size."""

    path: Path
    kind: str  # "EDF" or "BDF"
    variant: str  # "", "EDF+C", "EDF+D", "BDF+C", "BDF+D"
    start: dt.datetime | None
    n_records: int
    record_duration: float
    signals: tuple[SignalInfo, ...]
    annotation_indices: tuple[int, ...] = field(default=())
    record_samples: tuple[int, ...] = field(default=())  # samples per record of every signal, in file order
    header_bytes: int = 256
    sample_bytes: int = 2

    @property
    def duration(self) -> float:
        """Seconds from the file's start to the end of its last data record.

        Records x record duration, except in EDF+D where records start at their own onsets: there
        the gaps between records count too, so that every reader shares one time line.
        """
        if not self.is_discontinuous or self.n_records == 0:
            return self.n_records * self.record_duration
        return float(self.onsets[-1]) + self.record_duration

    @cached_property
    def onsets(self) -> np.ndarray:
        """Start of every data record, s from the file's start (read once; see record_onsets)."""
        return record_onsets(self)

    @property
    def is_discontinuous(self) -> bool:
        return self.variant.endswith("+D")

    @property
    def is_annotations_only(self) -> bool:
        """True for an EDF+ file with no signal besides its annotations (a hypnogram file)."""
        return len(self.signals) == 0 and len(self.annotation_indices) > 0

    @property
    def labels(self) -> list[str]:
        return [s.label for s in self.signals]


def _field(raw: bytes, what: str, path: Path) -> str:
    # EDF asks for ASCII; real files hold UTF-8 (which ASCII is part of) or, from older software, Latin-1.
    try:
        return raw.decode("utf-8").strip()
    except UnicodeDecodeError:
        return raw.decode("latin-1").strip()


def _number(text: str, what: str, path: Path, integer: bool = False) -> float:
    try:
        value = float(text)
    except ValueError:
        raise InputError(f"corrupted EDF header: {what} is {text!r}, not a number", path) from None
    if not np.isfinite(value):  # float() accepts 'nan' and 'inf'; no EDF field may hold them
        raise InputError(f"corrupted EDF header: {what} is {text!r}, not a finite number", path)
    if integer and value != int(value):
        raise InputError(f"corrupted EDF header: {what} is {text!r}, not a whole number", path)
    return int(value) if integer else value


def _start_time(date: str, time: str) -> dt.datetime | None:
    try:
        day, month, year = (int(p) for p in date.split("."))
        hour, minute, second = (int(p) for p in time.split("."))
        # EDF's two-digit years: 85-99 are 1985-1999, 00-84 are 2000-2084.
        year += 1900 if year >= 85 else 2000
        return dt.datetime(year, month, day, hour, minute, second)
    except (ValueError, TypeError):
        return None


def read_header(path: str | Path) -> EdfHeader:
    """Parse and validate the header of an EDF, EDF+ or BDF file.

    Raises InputError (one line, naming the file) when the path is not a readable file, is not an
    EDF/BDF file, has a malformed header, or is shorter than its header declares (truncated).
    """
    path = Path(path)
    if not path.exists():
        raise InputError("file not found", path)
    if path.is_dir():
        raise InputError("is a folder, not an EDF file", path)
    size, fixed, head, rest = _read_header_bytes(path)
    columns = _signal_columns(rest, head.ns, path)
    samples = [_number(n, f"samples per record of signal {i + 1} ({columns.labels[i]!r})", path, integer=True)
               for i, n in enumerate(columns.nsamps)]
    if any(n <= 0 for n in samples):
        bad = columns.labels[samples.index(min(samples))]
        raise InputError(f"corrupted EDF header: signal {bad!r} has no samples per record", path)
    n_records = _records_in_file(head, sum(samples) * head.sample_bytes, size, path)

    variant = ""
    if head.reserved.upper().startswith(("EDF+C", "EDF+D", "BDF+C", "BDF+D")):
        variant = head.reserved[:5].upper()
    annotation_indices = tuple(i for i, lab in enumerate(columns.labels) if lab.lower() in _ANNOTATION_LABELS)
    signals = _signal_infos(columns, samples, head.record_duration, annotation_indices, path)

    start = _start_time(_field(fixed[168:176], "", path), _field(fixed[176:184], "", path))
    return EdfHeader(path=path, kind=head.kind, variant=variant, start=start, n_records=int(n_records),
                     record_duration=float(head.record_duration), signals=tuple(signals),
                     annotation_indices=annotation_indices, record_samples=tuple(int(n) for n in samples),
                     header_bytes=int(head.header_bytes), sample_bytes=head.sample_bytes)


@dataclass(frozen=True)
class _FixedHeader:
    """The checked fields of the first 256 header bytes that the rest of the header depends on."""

    kind: str  # "EDF" or "BDF"
    sample_bytes: int
    header_bytes: int
    reserved: str
    n_records: int  # as declared: -1 while recording
    record_duration: float
    ns: int


def _read_header_bytes(path: Path) -> tuple[int, bytes, _FixedHeader, bytes]:
    """The file's size, its first 256 bytes, their fields and the ``256 * ns`` bytes of signal fields."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as fh:
            fixed = fh.read(256)
            if size == 0:
                raise InputError("file is empty (0 bytes), not an EDF file", path)
            if len(fixed) < 256:
                raise InputError(f"not an EDF file: only {len(fixed)} bytes, an EDF header needs 256", path)
            head = _parse_fixed(fixed, path)
            rest = fh.read(256 * head.ns)
            if len(rest) < 256 * head.ns:
                raise InputError("truncated EDF: the file ends inside its header", path)
    except OSError as exc:
        raise InputError(f"cannot read file: {exc.strerror or exc}", path) from None
    return size, fixed, head, rest


def _parse_fixed(fixed: bytes, path: Path) -> _FixedHeader:
    if fixed[:8] == b"0       ":
        kind, sample_bytes = "EDF", 2
    elif fixed[:8] == b"\xffBIOSEMI":
        kind, sample_bytes = "BDF", 3
    else:
        raise InputError("not an EDF/BDF file (its first bytes are not an EDF version field)", path)
    header_bytes = _number(_field(fixed[184:192], "", path), "header size", path, integer=True)
    reserved = _field(fixed[192:236], "", path)
    n_records = _number(_field(fixed[236:244], "", path), "number of data records", path, integer=True)
    record_duration = _number(_field(fixed[244:252], "", path), "data record duration", path)
    ns = _number(_field(fixed[252:256], "", path), "number of signals", path, integer=True)
    if ns < 0 or ns > 4096:
        raise InputError(f"corrupted EDF header: {ns} signals", path)
    if header_bytes != 256 * (ns + 1):
        raise InputError(
            f"corrupted EDF header: header size {header_bytes} bytes does not match "
            f"{ns} signals ({256 * (ns + 1)} bytes)", path)
    return _FixedHeader(kind=kind, sample_bytes=sample_bytes, header_bytes=header_bytes, reserved=reserved,
                        n_records=n_records, record_duration=record_duration, ns=ns)


@dataclass(frozen=True)
class _SignalColumns:
    """The per-signal header fields as text, one list per field, in file order."""

    labels: list[str]
    transducers: list[str]
    units: list[str]
    pmins: list[str]
    pmaxs: list[str]
    dmins: list[str]
    dmaxs: list[str]
    prefilters: list[str]
    nsamps: list[str]


# Width of each per-signal field; the header holds the field for every signal, then the next field.
_COLUMN_WIDTHS = (("labels", 16), ("transducers", 80), ("units", 8), ("pmins", 8), ("pmaxs", 8), ("dmins", 8),
                  ("dmaxs", 8), ("prefilters", 80), ("nsamps", 8))


def _signal_columns(rest: bytes, ns: int, path: Path) -> _SignalColumns:
    columns, offset = {}, 0
    for name, width in _COLUMN_WIDTHS:
        start = offset * ns
        columns[name] = [_field(rest[start + i * width:start + (i + 1) * width], "", path) for i in range(ns)]
        offset += width
    return _SignalColumns(**columns)


def _records_in_file(head: _FixedHeader, record_bytes: int, size: int, path: Path) -> int:
    """The number of data records: as declared, checked against the file's size (which tells when it is -1)."""
    n_records = head.n_records
    data_bytes = size - head.header_bytes
    complete = data_bytes // record_bytes if record_bytes else 0
    if n_records == -1:  # allowed while recording: the size tells
        n_records = int(complete)
    elif n_records < 0:
        raise InputError(f"corrupted EDF header: {n_records} data records", path)
    elif complete < n_records:
        raise InputError(
            f"truncated EDF: the header declares {n_records} data records ({n_records * record_bytes} bytes) "
            f"but the file holds {data_bytes} bytes of data ({complete} complete records)", path)
    elif complete > n_records:
        log.info("%s: %d bytes after the declared %d records are ignored", path,
                 data_bytes - n_records * record_bytes, n_records)
    return n_records


def _signal_infos(columns: _SignalColumns, samples: list[int], record_duration: float,
                  annotation_indices: tuple[int, ...], path: Path) -> list[SignalInfo]:
    """The ordinary signals (annotation signals left out), their scaling fields checked."""
    signals = []
    for i, label in enumerate(columns.labels):
        if i in annotation_indices:
            continue
        if record_duration <= 0:
            raise InputError(f"corrupted EDF header: data record duration is {record_duration} s "
                             "but the file holds signals", path)
        what = f"signal {label!r}"
        dmin = _number(columns.dmins[i], f"digital minimum of {what}", path, integer=True)
        dmax = _number(columns.dmaxs[i], f"digital maximum of {what}", path, integer=True)
        pmin = _number(columns.pmins[i], f"physical minimum of {what}", path)
        pmax = _number(columns.pmaxs[i], f"physical maximum of {what}", path)
        if dmax == dmin:
            raise InputError(f"corrupted EDF header: {what} has equal digital minimum and maximum", path)
        signals.append(SignalInfo(
            index=i, label=label, unit=columns.units[i], samples_per_record=samples[i],
            sampling_rate=samples[i] / record_duration, physical_min=pmin, physical_max=pmax,
            digital_min=int(dmin), digital_max=int(dmax), transducer=columns.transducers[i],
            prefilter=columns.prefilters[i]))
    return signals


def record_onsets(header: EdfHeader) -> np.ndarray:
    """Start time (s from the file's start) of every data record.

    Regular for EDF and EDF+C; for EDF+D, read from the time-keeping annotation that opens each
    record (the first TAL of the first annotation signal, ``+onset\\x14\\x14``).
    """
    regular = np.arange(header.n_records) * header.record_duration
    if not header.is_discontinuous or not header.annotation_indices or header.n_records == 0:
        return regular
    ann = header.annotation_indices[0]
    sb = header.sample_bytes
    record_bytes = sum(header.record_samples) * sb
    start = sum(header.record_samples[:ann]) * sb
    length = header.record_samples[ann] * sb
    data = np.memmap(header.path, dtype=np.uint8, mode="r", offset=header.header_bytes,
                     shape=(header.n_records, record_bytes))
    onsets = np.empty(header.n_records)
    for r in range(header.n_records):
        tal = bytes(data[r, start:start + length])
        try:
            onsets[r] = float(tal.split(b"\x14", 1)[0].decode("ascii"))
        except (ValueError, UnicodeDecodeError):
            raise InputError(f"EDF+D data record {r + 1} has no readable time-keeping annotation",
                             header.path) from None
    if not np.isfinite(onsets).all():
        raise InputError("EDF+D data records have a time-keeping annotation that is not a finite number", header.path)
    if np.any(np.diff(onsets) < header.record_duration - 1e-6):
        raise InputError("EDF+D data records overlap or are out of order", header.path)
    if not 0 <= onsets[0] <= 86400:  # the time line starts at the file's start time, before the first record
        raise InputError(f"EDF+D data record 1 starts {onsets[0]:g} s from the file's start time; is its "
                         "time-keeping annotation corrupted?", header.path)
    if onsets[-1] - onsets[0] > 7 * 86400:  # the gaps would become days of missing samples in memory
        raise InputError(f"EDF+D data record {header.n_records} starts {onsets[-1] - onsets[0]:g} s after the first, "
                         "longer than any recording; is its time-keeping annotation corrupted?", header.path)
    return onsets


class EdfReader:
    """Read single signals of an EDF file on demand, in microvolts.

    pyedflib is tried first (fast, reads one channel without touching the others); when it refuses
    a file, the samples are read straight from the data records (the header is already validated
    against the file's size). ``warnings`` collects what was done about odd headers, once per signal.
    Use as a context manager.
    """

    def __init__(self, path: str | Path, header: EdfHeader | None = None) -> None:
        self.path = Path(path)
        self.header = header or read_header(self.path)
        self.warnings: list[str] = []
        self._warned: set[int] = set()
        self._pyedf = None
        self._backend = ""

    def __enter__(self) -> "EdfReader":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._pyedf is not None:
            self._pyedf.close()
            self._pyedf = None

    @property
    def backend(self) -> str:
        """"pyedflib" or "direct" once a signal has been read."""
        return self._backend

    def _open(self) -> None:
        if self._backend:
            return
        import pyedflib

        try:
            self._pyedf = pyedflib.EdfReader(os.fspath(self.path))
            self._backend = "pyedflib"
        except OSError as exc:
            log.info("%s: pyedflib cannot open it (%s); reading its data records directly", self.path, exc)
            self._backend = "direct"

    def read(self, signal: SignalInfo) -> np.ndarray:
        """All samples of one signal as float32 microvolts (physical values x unit factor).

        A signal whose unit is not a voltage (or is blank) is returned in its own physical units.
        float32 holds EDF's 16-bit (BDF's 24-bit) samples exactly enough and halves the memory of a
        long recording.
        """
        origin, gain = self._scale(signal)
        self._open()
        digital = self._read_pyedflib(signal) if self._backend == "pyedflib" else self._read_direct(signal)
        expected = self.header.n_records * signal.samples_per_record
        if digital.shape[0] != expected:
            raise InputError(f"signal {signal.label!r} holds {digital.shape[0]} samples, "
                             f"the header declares {expected}", self.path)
        # EDF's linear map from digital to physical values, applied in place in float32.
        data = digital.astype(np.float32)
        del digital
        data -= np.float32(origin)
        data *= np.float32(gain)
        data += np.float32(signal.physical_min)
        factor = unit_to_microvolts(signal.unit)
        if factor is not None and factor != 1.0:
            data *= np.float32(factor)
        return data

    def _scale(self, signal: SignalInfo) -> tuple[float, float]:
        """``(origin, gain)`` with physical = physical_min + (digital - origin) * gain.

        EDF maps the digital minimum to the physical minimum and the maximum to the maximum. A
        physical maximum below the minimum is EDF's way to invert a signal; a digital minimum above
        the maximum is not allowed, so it is taken as two swapped fields rather than an inversion.
        """
        pmin, pmax = signal.physical_min, signal.physical_max
        dmin, dmax = signal.digital_min, signal.digital_max
        what = f"{self.path.name}: signal {signal.label!r}"
        if pmin == pmax:
            raise InputError(f"signal {signal.label!r} has equal physical minimum and maximum ({pmin:g}): its "
                             "header gives no scale for its samples, so it cannot be used", self.path)
        if dmin < dmax:
            return dmin, (pmax - pmin) / (dmax - dmin)
        if pmin > pmax:  # both pairs reversed: the same line as if neither were, a positive gain
            self._warn(signal, f"{what} has its digital and physical minimum and maximum both reversed "
                               f"({dmin}..{dmax}, {pmin:g}..{pmax:g}); read with the positive scale they describe")
            return dmin, (pmax - pmin) / (dmax - dmin)
        self._warn(signal, f"{what} has a digital minimum ({dmin}) above its digital maximum ({dmax}), which "
                           "EDF does not allow; taken as swapped, so the signal is not inverted")
        return dmax, (pmax - pmin) / (dmin - dmax)

    def _warn(self, signal: SignalInfo, message: str) -> None:
        if signal.index not in self._warned:
            self._warned.add(signal.index)
            self.warnings.append(message)

    def _read_pyedflib(self, signal: SignalInfo) -> np.ndarray:
        # pyedflib indexes signals without the annotation channel(s).
        idx = signal.index - sum(1 for a in self.header.annotation_indices if a < signal.index)
        try:
            return self._pyedf.readSignal(idx, digital=True)
        except Exception as exc:  # pyedflib raises assorted types on broken data
            raise InputError(f"cannot read signal {signal.label!r}: {exc}", self.path) from None

    def _read_direct(self, signal: SignalInfo) -> np.ndarray:
        """Digital samples of one signal from the data records: 16-bit (EDF) or 24-bit (BDF) little-endian."""
        h = self.header
        if h.n_records == 0:
            return np.zeros(0, np.int32)
        sb = h.sample_bytes
        start = sum(h.record_samples[:signal.index]) * sb
        width = signal.samples_per_record * sb
        try:
            records = np.memmap(self.path, dtype=np.uint8, mode="r", offset=h.header_bytes,
                                shape=(h.n_records, sum(h.record_samples) * sb))
            raw = np.ascontiguousarray(records[:, start:start + width]).reshape(-1, sb)
            del records
        except (OSError, ValueError) as exc:
            raise InputError(f"cannot read signal {signal.label!r}: {exc}", self.path) from None
        if sb == 2:
            return raw.view("<i2").ravel()
        b = raw.astype(np.int32)
        value = b[:, 0] | (b[:, 1] << 8) | (b[:, 2] << 16)
        value[value >= 1 << 23] -= 1 << 24  # 24-bit two's complement
        return value


def read_annotations(path: str | Path, header: EdfHeader | None = None
                     ) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """EDF+ annotations of a file: onsets (s from the file's start), durations (s, 0 if none), texts.

    Plain EDF files have none. pyedflib reads them; MNE is the fallback.
    """
    path = Path(path)
    header = header or read_header(path)
    if not header.annotation_indices:
        return np.zeros(0), np.zeros(0), []
    import pyedflib

    try:
        with pyedflib.EdfReader(os.fspath(path)) as reader:
            onsets, durations, texts = reader.readAnnotations()
    except OSError as exc:
        log.info("%s: pyedflib cannot read its annotations (%s); reading with MNE", path, exc)
        import mne

        try:
            ann = mne.read_annotations(path)
        except Exception as exc2:
            raise InputError(f"cannot read EDF+ annotations: {exc2}", path) from None
        onsets, durations, texts = ann.onset, ann.duration, list(ann.description)
    durations = np.where(np.asarray(durations, float) > 0, durations, 0.0).astype(float)
    return np.asarray(onsets, float), durations, [str(t) for t in texts]
