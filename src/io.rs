//! Reading the user's files: .npz tensors (float64 or float32) and the JSON model spec,
//! validated by name before any evaluation starts.
//!
//! May use: `model`, `error`. Reads and converts; never evaluates anything.

use std::fs::File;
use std::io::{Cursor, Read, Seek};
use std::path::{Path, PathBuf};

use ndarray::{Array2, ArrayD, IxDyn};

use crate::error::{Error, Result};
use crate::model::{Data, Grads, MAX_ELEMENTS, Model, ModelSpec, Params, Spec};

/// The tensors of one .npz file, converted to f64.
#[derive(Debug, Clone)]
pub struct Npz {
    /// Where they came from (for error messages).
    pub path: PathBuf,
    /// (key, array) in file order.
    pub arrays: Vec<(String, ArrayD<f64>)>,
    /// Keys stored as float32 in the file (their values carry f32 rounding).
    pub f32_keys: Vec<String>,
}

/// Bytes of tensor data one process reads from its input files, at most: 2 GiB, or
/// `GRADCHECK_MAX_INPUT_BYTES`. Checked against every array's declared shape before a byte
/// of it is allocated, so a 1.5 KB header claiming 8 TB, or a deflate bomb, is refused by
/// name instead of aborting the process.
pub fn input_budget() -> u64 {
    std::env::var("GRADCHECK_MAX_INPUT_BYTES")
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(2 << 30)
}

/// Largest .npy header read (numpy writes < 1 KiB; version 2 allows 4 GiB).
const MAX_NPY_HEADER: usize = 1 << 16;

/// The element types accepted: floats as such, integers and booleans (labels) as values.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Dtype {
    F64,
    F32,
    I64,
    I32,
    U8,
    Bool,
}

impl Dtype {
    fn parse(descr: &str) -> Option<(Dtype, bool)> {
        let mut chars = descr.chars();
        let big = match chars.next()? {
            '<' | '|' | '=' => false,
            '>' => true,
            _ => return None,
        };
        let code = chars.as_str();
        let t = match code {
            "f8" => Dtype::F64,
            "f4" => Dtype::F32,
            "i8" => Dtype::I64,
            "i4" => Dtype::I32,
            "u1" => Dtype::U8,
            "b1" => Dtype::Bool,
            _ => return None,
        };
        Some((t, big))
    }
    fn size(self) -> usize {
        match self {
            Dtype::F64 | Dtype::I64 => 8,
            Dtype::F32 | Dtype::I32 => 4,
            Dtype::U8 | Dtype::Bool => 1,
        }
    }
    fn decode(self, b: &[u8], big: bool) -> f64 {
        macro_rules! num {
            ($t:ty) => {{
                let a = b.try_into().expect("sized");
                if big {
                    <$t>::from_be_bytes(a)
                } else {
                    <$t>::from_le_bytes(a)
                }
            }};
        }
        match self {
            Dtype::F64 => num!(f64),
            Dtype::F32 => f64::from(num!(f32)),
            Dtype::I64 => num!(i64) as f64,
            Dtype::I32 => f64::from(num!(i32)),
            Dtype::U8 | Dtype::Bool => f64::from(b[0]),
        }
    }
}

/// A .npy header: the Python dict literal numpy writes, e.g.
/// `{'descr': '<f8', 'fortran_order': False, 'shape': (3, 4), }`, parsed by its grammar
/// (not searched for substrings: a `'descr': '<f4'` inside another key's string is not a
/// key). Exactly the keys descr, fortran_order and shape, each once.
#[derive(Debug, PartialEq)]
struct NpyHeader {
    descr: String,
    fortran_order: bool,
    shape: Vec<usize>,
}

/// A value of the header's dict.
#[derive(Debug, PartialEq)]
enum Literal {
    Str(String),
    Bool(bool),
    Tuple(Vec<usize>),
}

/// A cursor over the header text.
struct HeaderCursor<'a> {
    rest: &'a str,
}

impl HeaderCursor<'_> {
    fn skip_ws(&mut self) {
        self.rest = self.rest.trim_start();
    }
    fn eat(&mut self, c: char) -> bool {
        self.skip_ws();
        match self.rest.strip_prefix(c) {
            Some(r) => {
                self.rest = r;
                true
            }
            None => false,
        }
    }
    fn expect(&mut self, c: char) -> std::result::Result<(), String> {
        if self.eat(c) {
            Ok(())
        } else {
            Err(format!(
                "the .npy header is not a Python dict: expected {c:?} at {:?}",
                self.peek()
            ))
        }
    }
    fn peek(&self) -> String {
        self.rest.chars().take(12).collect()
    }
    fn string(&mut self) -> std::result::Result<String, String> {
        self.skip_ws();
        let q = self.rest.chars().next().filter(|c| *c == '\'' || *c == '"');
        let q =
            q.ok_or_else(|| format!("the .npy header: expected a string at {:?}", self.peek()))?;
        let body = &self.rest[1..];
        let end = body
            .find(q)
            .ok_or("the .npy header has an unterminated string")?;
        let s = body[..end].to_string();
        if s.contains('\\') {
            return Err("the .npy header has an escape in a string".into());
        }
        self.rest = &body[end + 1..];
        Ok(s)
    }
    fn value(&mut self) -> std::result::Result<Literal, String> {
        self.skip_ws();
        if self.rest.starts_with(['\'', '"']) {
            return self.string().map(Literal::Str);
        }
        for (word, v) in [("True", true), ("False", false)] {
            if let Some(r) = self.rest.strip_prefix(word) {
                self.rest = r;
                return Ok(Literal::Bool(v));
            }
        }
        self.expect('(')?;
        let mut dims = Vec::new();
        loop {
            if self.eat(')') {
                return Ok(Literal::Tuple(dims));
            }
            self.skip_ws();
            let digits = self
                .rest
                .find(|c: char| !c.is_ascii_digit())
                .unwrap_or(self.rest.len());
            if digits == 0 {
                return Err(format!("unreadable shape at {:?}", self.peek()));
            }
            let d = self.rest[..digits]
                .parse::<usize>()
                .map_err(|_| format!("unreadable shape at {:?}", self.peek()))?;
            self.rest = self.rest[digits..]
                .strip_prefix('L')
                .unwrap_or(&self.rest[digits..]);
            dims.push(d);
            if !self.eat(',') {
                self.expect(')')?;
                return Ok(Literal::Tuple(dims));
            }
        }
    }
}

impl NpyHeader {
    fn parse(text: &str) -> std::result::Result<NpyHeader, String> {
        let mut c = HeaderCursor { rest: text };
        c.expect('{')?;
        let (mut descr, mut fortran, mut shape) = (None, None, None);
        loop {
            if c.eat('}') {
                break;
            }
            let key = c.string()?;
            c.expect(':')?;
            let value = c
                .value()
                .map_err(|e| format!("the .npy header's {key:?}: {e}"))?;
            let slot_taken = match (key.as_str(), value) {
                ("descr", Literal::Str(v)) => descr.replace(v).is_some(),
                ("fortran_order", Literal::Bool(v)) => fortran.replace(v).is_some(),
                ("shape", Literal::Tuple(v)) => shape.replace(v).is_some(),
                ("descr" | "fortran_order" | "shape", v) => {
                    return Err(format!(
                        "the .npy header's {key:?} is {v:?}, not what numpy writes"
                    ));
                }
                _ => return Err(format!("the .npy header has an unknown key {key:?}")),
            };
            if slot_taken {
                return Err(format!("the .npy header has {key:?} twice"));
            }
            if !c.eat(',') {
                c.expect('}')?;
                break;
            }
        }
        c.skip_ws();
        if !c.rest.is_empty() {
            return Err(format!(
                "the .npy header has text after its dict: {:?}",
                c.peek()
            ));
        }
        Ok(NpyHeader {
            descr: descr.ok_or("the .npy header has no 'descr'")?,
            fortran_order: fortran.ok_or("the .npy header has no 'fortran_order'")?,
            shape: shape.ok_or("the .npy header has no 'shape'")?,
        })
    }
}

/// Reads one .npy stream of at most `declared` bytes: header first, the shape checked
/// against `budget` (bytes still allowed) before anything is allocated.
fn read_npy(
    r: &mut impl Read,
    declared: u64,
    budget: &mut u64,
) -> std::result::Result<(ArrayD<f64>, bool), String> {
    let mut magic = [0u8; 8];
    r.read_exact(&mut magic)
        .map_err(|_| "truncated: no .npy header".to_string())?;
    if &magic[..6] != b"\x93NUMPY" {
        return Err("not a .npy array (bad magic)".into());
    }
    let header_len = match magic[6] {
        1 => {
            let mut l = [0u8; 2];
            r.read_exact(&mut l)
                .map_err(|_| "truncated .npy header".to_string())?;
            usize::from(u16::from_le_bytes(l))
        }
        2 | 3 => {
            let mut l = [0u8; 4];
            r.read_exact(&mut l)
                .map_err(|_| "truncated .npy header".to_string())?;
            u32::from_le_bytes(l) as usize
        }
        v => return Err(format!(".npy format version {v} is not supported")),
    };
    if header_len > MAX_NPY_HEADER {
        return Err(format!(
            ".npy header of {header_len} bytes (at most {MAX_NPY_HEADER})"
        ));
    }
    let mut header = vec![0u8; header_len];
    r.read_exact(&mut header)
        .map_err(|_| "truncated .npy header".to_string())?;
    let header = String::from_utf8_lossy(&header);
    let NpyHeader {
        descr,
        fortran_order: fortran,
        shape,
    } = NpyHeader::parse(&header)?;
    let (dtype, big) = Dtype::parse(&descr).ok_or_else(|| {
        format!("dtype {descr}; expected float64 or float32 (or integer/bool labels)")
    })?;
    let count = shape
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .filter(|&n| n <= MAX_ELEMENTS)
        .ok_or_else(|| format!("shape {shape:?} has more than {MAX_ELEMENTS} elements"))?;
    let bytes = (count as u64) * dtype.size() as u64;
    let header_total = (if magic[6] == 1 { 10 } else { 12 } + header_len) as u64;
    if bytes + header_total > declared {
        return Err(format!(
            "shape {shape:?} needs {bytes} bytes but the entry holds {}",
            declared.saturating_sub(header_total)
        ));
    }
    let f64_bytes = (count as u64) * 8;
    if f64_bytes > *budget {
        return Err(format!(
            "shape {shape:?} would take {} MiB, over the input budget ({} MiB left; raise GRADCHECK_MAX_INPUT_BYTES)",
            f64_bytes >> 20,
            *budget >> 20
        ));
    }
    *budget -= f64_bytes;
    let mut values = Vec::with_capacity(count);
    let mut chunk = vec![0u8; dtype.size() * 4096];
    let mut left = count;
    while left > 0 {
        let k = left.min(4096);
        let buf = &mut chunk[..k * dtype.size()];
        r.read_exact(buf)
            .map_err(|_| format!("truncated: shape {shape:?} but the data ends early"))?;
        values.extend(buf.chunks_exact(dtype.size()).map(|b| dtype.decode(b, big)));
        left -= k;
    }
    let arr = if fortran {
        let rev: Vec<usize> = shape.iter().rev().copied().collect();
        ArrayD::from_shape_vec(IxDyn(&rev), values)
            .map_err(|e| e.to_string())?
            .reversed_axes()
            .as_standard_layout()
            .into_owned()
    } else {
        ArrayD::from_shape_vec(IxDyn(&shape), values).map_err(|e| e.to_string())?
    };
    Ok((arr, dtype == Dtype::F32))
}

fn read_all<R: Read + Seek>(path: &Path, reader: R) -> Result<Npz> {
    let fmt = |msg: String| Error::Format {
        path: path.to_owned(),
        msg,
    };
    let mut reader = reader;
    // The zip reader keeps one entry per name: a second member of the same name would be
    // dropped silently, so the central directory is read here first.
    if let Some(name) = duplicate_member(&mut reader) {
        return Err(fmt(format!(
            "{} appears twice in the archive (which copy is meant is undefined)",
            name.strip_suffix(".npy").unwrap_or(&name)
        )));
    }
    let mut zip =
        zip::ZipArchive::new(reader).map_err(|e| fmt(format!("not a numpy .npz archive ({e})")))?;
    let mut arrays: Vec<(String, ArrayD<f64>)> = Vec::with_capacity(zip.len());
    let mut f32_keys = Vec::new();
    let mut budget = input_budget();
    for k in 0..zip.len() {
        let mut entry = zip
            .by_index(k)
            .map_err(|e| fmt(format!("unreadable .npz ({e})")))?;
        let Some(name) = entry.name().strip_suffix(".npy").map(str::to_owned) else {
            return Err(fmt(format!("{} is not a .npy entry", entry.name())));
        };
        if arrays.iter().any(|(n, _)| *n == name) {
            return Err(fmt(format!("{name} appears twice")));
        }
        let declared = entry.size();
        let (arr, was_f32) =
            read_npy(&mut entry, declared, &mut budget).map_err(|m| fmt(format!("{name}: {m}")))?;
        // Reading to the entry's end is what makes the zip reader compare its CRC-32.
        std::io::copy(&mut entry, &mut std::io::sink()).map_err(|e| {
            fmt(format!(
                "{name}: the data does not match its CRC-32 checksum: a damaged file ({e})"
            ))
        })?;
        if was_f32 {
            f32_keys.push(name.clone());
        }
        arrays.push((name, arr));
    }
    Ok(Npz {
        path: path.to_owned(),
        arrays,
        f32_keys,
    })
}

/// The first member name that appears twice in a zip's central directory (read directly:
/// the zip crate keeps one entry per name). `None` when there is none, or when the
/// directory cannot be read this way (zip64; the zip reader then judges the archive).
fn duplicate_member<R: Read + Seek>(r: &mut R) -> Option<String> {
    use std::io::SeekFrom;
    let le16 = |b: &[u8], at: usize| u16::from_le_bytes([b[at], b[at + 1]]) as usize;
    let le32 =
        |b: &[u8], at: usize| u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]) as usize;
    let found = (|| -> std::io::Result<Option<String>> {
        let len = r.seek(SeekFrom::End(0))?;
        let tail_len = len.min(22 + 65_535);
        r.seek(SeekFrom::Start(len - tail_len))?;
        let mut tail = vec![0u8; tail_len as usize];
        r.read_exact(&mut tail)?;
        let Some(eocd) = (0..tail.len().saturating_sub(21))
            .rev()
            .find(|&i| tail[i..i + 4] == [0x50, 0x4b, 0x05, 0x06])
        else {
            return Ok(None);
        };
        let (entries, size, offset) = (
            le16(&tail, eocd + 10),
            le32(&tail, eocd + 12),
            le32(&tail, eocd + 16),
        );
        if entries == 0xFFFF || size == 0xFFFF_FFFF || offset == 0xFFFF_FFFF || size > 64 << 20 {
            return Ok(None);
        }
        r.seek(SeekFrom::Start(offset as u64))?;
        let mut dir = vec![0u8; size];
        r.read_exact(&mut dir)?;
        let mut names = std::collections::HashSet::new();
        let mut at = 0;
        for _ in 0..entries {
            if at + 46 > dir.len() || dir[at..at + 4] != [0x50, 0x4b, 0x01, 0x02] {
                return Ok(None);
            }
            let (n, extra, comment) = (
                le16(&dir, at + 28),
                le16(&dir, at + 30),
                le16(&dir, at + 32),
            );
            let Some(raw) = dir.get(at + 46..at + 46 + n) else {
                return Ok(None);
            };
            let name = String::from_utf8_lossy(raw).into_owned();
            if !names.insert(name.clone()) {
                return Ok(Some(name));
            }
            at += 46 + n + extra + comment;
        }
        Ok(None)
    })();
    let _ = r.seek(std::io::SeekFrom::Start(0));
    found.ok().flatten()
}

/// Opens a regular file (a FIFO or a device would block or never end) of at most `cap`
/// bytes.
pub fn open_regular(path: &Path, cap: u64) -> Result<File> {
    let io = |error: std::io::Error| Error::Io {
        path: path.to_owned(),
        error,
    };
    let meta = std::fs::metadata(path).map_err(io)?;
    if !meta.is_file() {
        return Err(Error::Format {
            path: path.to_owned(),
            msg: "not a regular file".into(),
        });
    }
    if meta.len() > cap {
        return Err(Error::Format {
            path: path.to_owned(),
            msg: format!(
                "{} bytes: more than the {} MiB expected of this file",
                meta.len(),
                cap >> 20
            ),
        });
    }
    File::open(path).map_err(io)
}

/// Reads a small text file (JSON, TOML) through [`open_regular`], capped at 16 MiB.
pub fn read_text(path: &Path) -> Result<String> {
    let mut s = String::new();
    open_regular(path, 16 << 20)?
        .read_to_string(&mut s)
        .map_err(|error| Error::Io {
            path: path.to_owned(),
            error,
        })?;
    Ok(s)
}

impl Npz {
    /// Refuses NaN and infinities (by key and position): inputs must be finite. Gradients
    /// are not checked here — a NaN gradient is a backprop bug, reported as a failure.
    pub fn require_finite(&self) -> Result<()> {
        for (key, arr) in &self.arrays {
            if let Some((pos, v)) = arr.indexed_iter().find(|(_, v)| !v.is_finite()) {
                use ndarray::Dimension;
                return Err(Error::NonFinite {
                    path: self.path.clone(),
                    key: key.clone(),
                    value: v.to_string(),
                    position: format!("{:?}", pos.as_array_view().to_vec()),
                });
            }
        }
        Ok(())
    }

    /// Reads an .npz file from disk.
    pub fn open(path: &Path) -> Result<Npz> {
        // Compressed entries can unpack to far more than the file: the budget, not the
        // file size, bounds what is read.
        let f = open_regular(path, u64::MAX)?;
        read_all(path, std::io::BufReader::new(f))
    }

    /// Reads an .npz held in memory (the built-in examples); `name` labels errors.
    pub fn from_bytes(name: &str, bytes: &[u8]) -> Result<Npz> {
        read_all(Path::new(name), Cursor::new(bytes))
    }

    fn keys(&self) -> String {
        let k: Vec<&str> = self.arrays.iter().map(|(k, _)| k.as_str()).collect();
        if k.is_empty() {
            "no arrays".into()
        } else {
            k.join(", ")
        }
    }

    fn get(&self, key: &str) -> Result<&ArrayD<f64>> {
        self.arrays
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, a)| a)
            .ok_or_else(|| Error::MissingKey {
                path: self.path.clone(),
                key: key.into(),
                present: self.keys(),
            })
    }

    /// Fails on any key not in `expected`.
    fn only(&self, expected: &[String]) -> Result<()> {
        for (k, _) in &self.arrays {
            if !expected.contains(k) {
                return Err(Error::ExtraKey {
                    path: self.path.clone(),
                    key: k.clone(),
                    expected: expected.join(", "),
                });
            }
        }
        Ok(())
    }

    /// `key` as a matrix: 2-D as is; a 1-D array is taken as a column when `column_ok`
    /// (b as (n,) for (n, 1)) or as a row otherwise (Y as (m,) for (1, m)).
    fn matrix(&self, key: &str, column_ok: bool) -> Result<Array2<f64>> {
        let a = self.get(key)?;
        let shape = a.shape().to_vec();
        let (r, c) = match shape.as_slice() {
            [r, c] => (*r, *c),
            [n] if column_ok => (*n, 1),
            [n] => (1, *n),
            _ => {
                return Err(Error::Shape(format!(
                    "{}: {key} has shape {shape:?}; expected a matrix",
                    self.path.display()
                )));
            }
        };
        Ok(Array2::from_shape_vec((r, c), a.iter().copied().collect()).expect("sizes agree"))
    }
}

fn shape_str(r: usize, c: usize) -> String {
    format!("{r}×{c}")
}

/// Layer sizes from the weight shapes W1 … WL (checking that they chain).
fn infer_layers(npz: &Npz) -> Result<Vec<usize>> {
    let count = npz
        .arrays
        .iter()
        .filter(|(k, _)| k.starts_with('W') && k[1..].parse::<usize>().is_ok())
        .count();
    if count == 0 {
        return Err(Error::MissingKey {
            path: npz.path.clone(),
            key: "W1".into(),
            present: npz.keys(),
        });
    }
    let mut layers = Vec::new();
    for l in 1..=count {
        let w = npz.matrix(&format!("W{l}"), false)?;
        if l == 1 {
            layers.push(w.ncols());
        } else if w.ncols() != layers[l - 1] {
            return Err(Error::Shape(format!(
                "{}: W{l} is {} but W{} has {} rows (W{l} must be n{l} × n{})",
                npz.path.display(),
                shape_str(w.nrows(), w.ncols()),
                l - 1,
                layers[l - 1],
                l - 1
            )));
        }
        layers.push(w.nrows());
    }
    Ok(layers)
}

/// Fills a flat vector from `prefix`W1, `prefix`b1, … checking each shape against the model.
fn flat_from(npz: &Npz, model: &Model, prefix: &str) -> Result<Vec<f64>> {
    let layout = model.layout();
    let expected: Vec<String> = layout
        .tensors()
        .iter()
        .map(|t| format!("{prefix}{}", t.name))
        .collect();
    let mut values = vec![0.0; layout.len()];
    for (slot, key) in layout.tensors().iter().zip(&expected) {
        let a = npz.matrix(key, true)?;
        if a.dim() != (slot.rows, slot.cols) {
            return Err(Error::Shape(format!(
                "{}: {key} is {} but {} is {} {}",
                npz.path.display(),
                shape_str(a.nrows(), a.ncols()),
                slot.name,
                shape_str(slot.rows, slot.cols),
                if prefix.is_empty() {
                    "in the model spec"
                } else {
                    "(gradients must have their parameter's shape)"
                }
            )));
        }
        values[slot.range()].copy_from_slice(a.as_slice().expect("standard layout"));
    }
    npz.only(&expected)?;
    Ok(values)
}

/// Parameters (and the model, from the spec or inferred from the shapes). Returns the
/// model, the parameters, and whether the model was inferred.
pub fn params_from(npz: &Npz, spec: Option<Spec>) -> Result<(Model, Params, bool)> {
    npz.require_finite()?;
    let spec = match spec {
        Some(Spec::Net(net)) => {
            let model = crate::net::build(&net)?;
            let values = flat_from_layered(npz, &model, "")?;
            let params = Params::new(model.layout().clone(), values)?;
            return Ok((model, params, false));
        }
        Some(Spec::Mlp(s)) => Some(s),
        None => None,
    };
    let inferred = spec.is_none();
    // A given spec is validated (sizes, memory) before anything else is read.
    let given = spec.map(Model::new).transpose()?;
    let layers = infer_layers(npz)?;
    let model = match given {
        Some(m) => {
            if m.sizes() != layers.as_slice() {
                return Err(Error::Shape(format!(
                    "{}: the weights give layers {layers:?} but the model spec says {:?}",
                    npz.path.display(),
                    m.sizes()
                )));
            }
            m
        }
        None => Model::new(ModelSpec::notebook_default(layers))?,
    };
    let values = flat_from(npz, &model, "")?;
    let params = Params::new(model.layout().clone(), values)?;
    Ok((model, params, inferred))
}

/// A layered network's tensors `prefix`NAME in the user's shapes (a bias may also come
/// as (C,) or with its unit axes: (1, 1, 1, C), (1, n)).
fn flat_from_layered(npz: &Npz, model: &Model, prefix: &str) -> Result<Vec<f64>> {
    let layout = model.layout();
    let expected: Vec<String> = layout
        .tensors()
        .iter()
        .map(|t| format!("{prefix}{}", t.name))
        .collect();
    let mut values = vec![0.0; layout.len()];
    for (slot, key) in layout.tensors().iter().zip(&expected) {
        let a = npz.get(key)?;
        let squeezed =
            |s: &[usize]| -> Vec<usize> { s.iter().copied().filter(|&d| d != 1).collect() };
        let fits = a.shape() == slot.shape.as_slice()
            || (slot.kind == crate::model::TensorKind::Bias
                && squeezed(a.shape()) == squeezed(&slot.shape));
        if !fits {
            let transposed = a.shape().len() == 2
                && slot.shape.len() == 2
                && a.shape()[0] == slot.shape[1]
                && a.shape()[1] == slot.shape[0];
            let layout = model.net().map(|n| n.array_layout);
            return Err(Error::Shape(format!(
                "{}: {key} has shape {:?} but {} is {:?} in the model spec{}{}",
                npz.path.display(),
                a.shape(),
                slot.name,
                slot.shape,
                if prefix.is_empty() {
                    ""
                } else {
                    " (gradients must have their parameter's shape)"
                },
                match (transposed, layout) {
                    (true, Some(crate::model::ArrayLayout::Course)) => {
                        ": it is the transpose — in the samples-first (course) layout W is (n_in, n_out); PyTorch's (out, in) is \"layout\": \"nchw\""
                    }
                    (true, _) => {
                        ": it is the transpose — in the nchw layout W is (out, in); (n_in, n_out) is \"layout\": \"samples_first\""
                    }
                    _ => "",
                }
            )));
        }
        for (v, x) in values[slot.range()].iter_mut().zip(a.iter()) {
            *v = *x;
        }
    }
    npz.only(&expected)?;
    Ok(values)
}

/// Gradients dW1, db1, … for the model.
pub fn grads_from(npz: &Npz, model: &Model) -> Result<Grads> {
    let values = if model.net().is_some() {
        flat_from_layered(npz, model, "d")?
    } else {
        flat_from(npz, model, "d")?
    };
    Grads::new(model.layout().clone(), values)
}

/// Data X (n0 × m), Y (nL × m), and dropout masks D1, D2, … (n_l × m, 0/1) for the
/// hidden layers that have them.
pub fn data_from(npz: &Npz, model: &Model) -> Result<Data> {
    npz.require_finite()?;
    if let Some(net) = model.net() {
        return layered_data_from(npz, model, net);
    }
    let mask_keys: Vec<String> = (1..model.depth()).map(|l| format!("D{l}")).collect();
    let mut keys = vec!["X".to_string(), "Y".to_string()];
    keys.extend(mask_keys.iter().cloned());
    npz.only(&keys)?;
    let x = npz.matrix("X", false)?;
    let y = class_labels_one_hot(npz, model, npz.matrix("Y", false)?, x.ncols())?;
    let mut masks = Vec::new();
    for (l, key) in mask_keys.iter().enumerate() {
        if npz.arrays.iter().any(|(k, _)| k == key) {
            masks.push((l + 1, npz.matrix(key, false)?));
        }
    }
    let total: usize = model
        .sizes()
        .iter()
        .sum::<usize>()
        .saturating_mul(x.ncols());
    if total > MAX_ELEMENTS {
        return Err(Error::Shape(format!(
            "{}: m = {} samples would need {total} activations in memory (limit {MAX_ELEMENTS})",
            npz.path.display(),
            x.ncols()
        )));
    }
    Data::with_masks(model, x, y, masks).map_err(|e| match e {
        Error::Spec(s) => Error::Spec(format!("{}: {s}", npz.path.display())),
        Error::Shape(s) => Error::Shape(format!("{}: {s}", npz.path.display())),
        other => other,
    })
}

/// A layered network's data, samples first: X (m, *input_shape), Y (m, n_out), (m,) or
/// class indices (m,) for softmax cross-entropy; converted to the channels-last columns
/// the network computes on.
fn layered_data_from(npz: &Npz, model: &Model, net: &crate::model::Net) -> Result<Data> {
    npz.only(&["X".to_string(), "Y".to_string()])?;
    let x = npz.get("X")?;
    let shape = x.shape();
    if shape.len() != net.input_shape.len() + 1 || shape[1..] != net.input_shape[..] {
        return Err(Error::Shape(format!(
            "{}: X has shape {shape:?} but the model takes (m, {}) (samples first, input_shape {:?} in the {:?} layout)",
            npz.path.display(),
            net.input_shape
                .iter()
                .map(usize::to_string)
                .collect::<Vec<_>>()
                .join(", "),
            net.input_shape,
            net.array_layout
        )));
    }
    let m = shape[0];
    let n_in = model.sizes()[0];
    let n_out = model.sizes()[1];
    if m.saturating_mul(net.layers.iter().map(|l| l.out_len()).sum::<usize>() + n_in) > MAX_ELEMENTS
    {
        return Err(Error::Shape(format!(
            "{}: m = {m} samples would need more than {MAX_ELEMENTS} activations in memory",
            npz.path.display()
        )));
    }
    let flat: Vec<f64> = x.iter().copied().collect();
    // Columns: one sample each, channels-last.
    let mut cols = Array2::zeros((n_in, m));
    let nchw = net.array_layout == crate::model::ArrayLayout::Nchw && net.input_shape.len() == 3;
    for j in 0..m {
        let sample = &flat[j * n_in..(j + 1) * n_in];
        for (k, &v) in sample.iter().enumerate() {
            let at = if nchw {
                let (c, hw) = (net.input_shape[0], net.input_shape[1] * net.input_shape[2]);
                (k % hw) * c + k / hw
            } else {
                k
            };
            cols[[at, j]] = v;
        }
    }
    let y = npz.get("Y")?;
    let y2 = match y.shape() {
        [r, c] if *r == m && *c == n_out => {
            Array2::from_shape_vec((m, n_out), y.iter().copied().collect())
                .expect("sizes agree")
                .reversed_axes()
        }
        [r] if *r == m && n_out == 1 => {
            Array2::from_shape_vec((1, m), y.iter().copied().collect()).expect("sizes agree")
        }
        [r] if *r == m && model.loss() == crate::model::Loss::SoftmaxCrossEntropy => {
            Array2::from_shape_vec((1, m), y.iter().copied().collect()).expect("sizes agree")
        }
        other => {
            return Err(Error::Shape(format!(
                "{}: Y has shape {other:?} but must be (m, {n_out}) = ({m}, {n_out}) (samples first){}",
                npz.path.display(),
                if model.loss() == crate::model::Loss::SoftmaxCrossEntropy {
                    format!(", or class indices ({m},)")
                } else {
                    String::new()
                }
            )));
        }
    };
    let y2 = class_labels_one_hot(npz, model, y2.as_standard_layout().to_owned(), m)?;
    Data::new(model, cols, y2).map_err(|e| match e {
        Error::Shape(s) => Error::Shape(format!("{}: {s}", npz.path.display())),
        other => other,
    })
}

/// Softmax cross-entropy labels given as class indices — Y of shape (m,) or 1 × m holding
/// integers 0 … C − 1, what every classifier has — become the one-hot C × m matrix the cost
/// is written for. An index outside 0 … C − 1 is refused naming the sample. Anything else
/// (a C × m Y, or another cost) is returned as it is.
fn class_labels_one_hot(npz: &Npz, model: &Model, y: Array2<f64>, m: usize) -> Result<Array2<f64>> {
    let classes = *model.sizes().last().expect("a model has layers");
    let indices = model.loss() == crate::model::Loss::SoftmaxCrossEntropy
        && classes > 1
        && y.nrows() == 1
        && y.ncols() == m;
    if !indices {
        return Ok(y);
    }
    let mut one_hot = Array2::zeros((classes, m));
    for (j, &c) in y.iter().enumerate() {
        if c.fract() != 0.0 || c < 0.0 || c >= classes as f64 {
            return Err(Error::Shape(format!(
                "{}: Y holds class indices (1 × m) but sample {j} has {c}: the output has {classes} classes, 0 … {}",
                npz.path.display(),
                classes - 1
            )));
        }
        one_hot[[c as usize, j]] = 1.0;
    }
    Ok(one_hot)
}

/// Writes the dropout masks of `data` (D1, D2, … as 0/1, n_l × m, float64) to an .npz
/// readable as a data file's masks; returns how many were written. A model without
/// dropout is an error (there is nothing to save).
pub fn write_masks(path: &Path, model: &Model, data: &Data) -> Result<usize> {
    let Some(d) = model.dropout() else {
        return Err(Error::Spec(
            "--save-masks: the model has no dropout (add \"dropout\" to the model spec)".into(),
        ));
    };
    let io_err = |error: std::io::Error| Error::Io {
        path: path.to_owned(),
        error,
    };
    // Whole or not at all: a temporary file beside it, renamed when complete.
    let tmp = path.with_file_name(format!(
        ".{}.{}.tmp",
        path.file_name()
            .map_or_else(|| "masks".into(), |n| n.to_string_lossy()),
        std::process::id()
    ));
    let file = File::create(&tmp).map_err(io_err)?;
    let mut w = ndarray_npy::NpzWriter::new(file);
    let mut layers = d.layers.clone();
    layers.sort_unstable();
    for &l in &layers {
        let bits = data
            .mask_bits(l)
            .ok_or_else(|| Error::Spec(format!("layer {l} has dropout but no mask")))?;
        w.add_array(format!("D{l}"), &bits)
            .map_err(|e| io_err(std::io::Error::other(e.to_string())))?;
    }
    let done = w
        .finish()
        .map_err(|e| std::io::Error::other(e.to_string()))
        .and_then(|f| f.sync_all())
        .and_then(|()| std::fs::rename(&tmp, path));
    if let Err(e) = done {
        let _ = std::fs::remove_file(&tmp);
        return Err(io_err(e));
    }
    Ok(layers.len())
}

/// Reads a JSON file into `T`; `what` names the expected content in the error.
pub fn read_json<T: serde::de::DeserializeOwned>(path: &Path, what: &str) -> Result<T> {
    let text = read_text(path)?;
    parse_json(path, what, &text)
}

/// [`read_json`] of a file of at most `cap` bytes.
pub fn read_json_capped<T: serde::de::DeserializeOwned>(
    path: &Path,
    what: &str,
    cap: u64,
) -> Result<T> {
    let mut text = String::new();
    open_regular(path, cap)?
        .read_to_string(&mut text)
        .map_err(|e| Error::Format {
            path: path.to_owned(),
            msg: format!("not a valid {what}: {e}"),
        })?;
    parse_json(path, what, &text)
}

fn parse_json<T: serde::de::DeserializeOwned>(path: &Path, what: &str, text: &str) -> Result<T> {
    serde_json::from_str(text).map_err(|e| Error::Format {
        path: path.to_owned(),
        msg: format!("not a valid {what}: {e}"),
    })
}

/// Reads a JSON model spec (the MLP shorthand, or a network of layer types).
pub fn spec_from_file(path: &Path) -> Result<Spec> {
    let text = read_text(path)?;
    Spec::from_json(&text).map_err(|msg| Error::Format {
        path: path.to_owned(),
        msg: format!("not a valid model spec: {msg}"),
    })
}
