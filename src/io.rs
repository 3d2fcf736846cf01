//! Reading the user's files: .npz tensors (float64 or float32) and the JSON model spec,
//! validated by name before any evaluation starts.
//!
//! May use: `model`, `error`. Reads and converts; never evaluates anything.

use std::fs::File;
use std::io::{Cursor, Read, Seek};
use std::path::{Path, PathBuf};

use ndarray::{Array2, ArrayD, IxDyn};
use ndarray_npy::{NpzReader, ReadNpyError, ReadNpzError};

use crate::error::{Error, Result};
use crate::model::{Data, Grads, MAX_ELEMENTS, Model, ModelSpec, Params};

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

fn read_all<R: Read + Seek>(path: &Path, reader: R) -> Result<Npz> {
    let fmt = |msg: String| Error::Format {
        path: path.to_owned(),
        msg,
    };
    let mut npz =
        NpzReader::new(reader).map_err(|e| fmt(format!("not a numpy .npz archive ({e})")))?;
    let names = npz
        .names()
        .map_err(|e| fmt(format!("unreadable .npz ({e})")))?;
    let mut arrays = Vec::with_capacity(names.len());
    let mut f32_keys = Vec::new();
    for name in names {
        let arr: ArrayD<f64> = match npz.by_name::<ndarray::OwnedRepr<f64>, IxDyn>(&name) {
            Ok(a) => a,
            Err(ReadNpzError::Npy(ReadNpyError::WrongDescriptor(d))) => {
                match npz.by_name::<ndarray::OwnedRepr<f32>, IxDyn>(&name) {
                    Ok(a) => {
                        f32_keys.push(name.clone());
                        a.mapv(f64::from)
                    }
                    Err(_) => {
                        return Err(fmt(format!(
                            "{name} has dtype {d}; expected float64 or float32"
                        )));
                    }
                }
            }
            Err(e) => return Err(fmt(format!("{name}: {e}"))),
        };
        if let Some((pos, v)) = arr.indexed_iter().find(|(_, v)| !v.is_finite()) {
            use ndarray::Dimension;
            return Err(Error::NonFinite {
                path: path.to_owned(),
                key: name,
                value: v.to_string(),
                position: format!("{:?}", pos.as_array_view().to_vec()),
            });
        }
        arrays.push((name, arr));
    }
    Ok(Npz {
        path: path.to_owned(),
        arrays,
        f32_keys,
    })
}

impl Npz {
    /// Reads an .npz file from disk.
    pub fn open(path: &Path) -> Result<Npz> {
        let f = File::open(path).map_err(|source| Error::Io {
            path: path.to_owned(),
            source,
        })?;
        read_all(path, f)
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
pub fn params_from(npz: &Npz, spec: Option<ModelSpec>) -> Result<(Model, Params, bool)> {
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

/// Gradients dW1, db1, … for the model.
pub fn grads_from(npz: &Npz, model: &Model) -> Result<Grads> {
    let values = flat_from(npz, model, "d")?;
    Grads::new(model.layout().clone(), values)
}

/// Data X (n0 × m), Y (nL × m), and dropout masks D1, D2, … (n_l × m, 0/1) for the
/// hidden layers that have them.
pub fn data_from(npz: &Npz, model: &Model) -> Result<Data> {
    let mask_keys: Vec<String> = (1..model.depth()).map(|l| format!("D{l}")).collect();
    let mut keys = vec!["X".to_string(), "Y".to_string()];
    keys.extend(mask_keys.iter().cloned());
    npz.only(&keys)?;
    let x = npz.matrix("X", false)?;
    let y = npz.matrix("Y", false)?;
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

/// Writes the dropout masks of `data` (D1, D2, … as 0/1, n_l × m, float64) to an .npz
/// readable as a data file's masks; returns how many were written. A model without
/// dropout is an error (there is nothing to save).
pub fn write_masks(path: &Path, model: &Model, data: &Data) -> Result<usize> {
    let Some(d) = model.dropout() else {
        return Err(Error::Spec(
            "--save-masks: the model has no dropout (add \"dropout\" to the model spec)".into(),
        ));
    };
    let io_err = |e: std::io::Error| Error::Io {
        path: path.to_owned(),
        source: e,
    };
    let file = File::create(path).map_err(io_err)?;
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
    w.finish()
        .map_err(|e| io_err(std::io::Error::other(e.to_string())))?;
    Ok(layers.len())
}

/// Reads a JSON file into `T`; `what` names the expected content in the error.
pub fn read_json<T: serde::de::DeserializeOwned>(path: &Path, what: &str) -> Result<T> {
    let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
        path: path.to_owned(),
        source,
    })?;
    serde_json::from_str(&text).map_err(|e| Error::Format {
        path: path.to_owned(),
        msg: format!("not a valid {what}: {e}"),
    })
}

/// Reads a JSON model spec.
pub fn spec_from_file(path: &Path) -> Result<ModelSpec> {
    read_json(path, "model spec")
}
