//! Kernel module resolution: turns module names into the `.ko` files to load, dependencies
//! first.
//!
//! Dependencies come from `modules.dep` when the modules directory has one. Debian's kernel
//! packages do not ship it (the package's postinst runs `depmod`), so without it the
//! `depends=` field of each module's `.modinfo` section is read instead. Names compare with
//! `-` and `_` as the same character; modules listed in `modules.builtin` are skipped.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io;
use std::path::{Path, PathBuf};

use crate::elf;

/// Errors from module resolution.
#[derive(Debug, thiserror::Error)]
pub enum ModulesError {
    /// A file of the modules directory could not be read.
    #[error("could not read {path}")]
    Read {
        /// The path that failed.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// A requested module (or a dependency) is neither a loadable module nor built in.
    #[error("the kernel module {0:?} is neither a loadable module nor built into the kernel")]
    NotFound(String),
    /// A module's `.modinfo` could not be parsed.
    #[error("could not read the module information of {path}")]
    Elf {
        /// The module file.
        path: PathBuf,
        /// The parse error.
        source: elf::ElfError,
    },
    /// Dependencies of a compressed module can only be found through `modules.dep`.
    #[error("{0} is compressed and there is no modules.dep to read its dependencies from")]
    Compressed(PathBuf),
    /// The dependency graph has a cycle.
    #[error("the kernel modules have a dependency cycle through {0:?}")]
    Cycle(String),
}

/// A module to load: its canonical name (with `_`), its path relative to the modules
/// directory and its absolute path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Module {
    /// Canonical name, `-` replaced by `_`.
    pub name: String,
    /// Path relative to the modules directory, e.g. `kernel/drivers/block/virtio_blk.ko`.
    pub relative: PathBuf,
    /// Absolute path of the module file.
    pub path: PathBuf,
}

/// File name endings of kernel modules, uncompressed and compressed.
const MODULE_SUFFIXES: [&str; 4] = [".ko", ".ko.xz", ".ko.zst", ".ko.gz"];

/// Returns the canonical module name: the file name without its suffix, `-` turned to `_`.
pub fn canonical_name(name_or_path: &str) -> String {
    let base = name_or_path.rsplit('/').next().unwrap_or(name_or_path);
    let base = MODULE_SUFFIXES
        .iter()
        .find_map(|s| base.strip_suffix(s))
        .unwrap_or(base);
    base.replace('-', "_")
}

/// Returns true if the path names a compressed module.
pub fn is_compressed(path: &Path) -> bool {
    let s = path.to_string_lossy();
    MODULE_SUFFIXES[1..]
        .iter()
        .any(|suffix| s.ends_with(suffix))
}

/// An index of one modules directory.
struct Index {
    dir: PathBuf,
    /// name -> relative path
    paths: HashMap<String, PathBuf>,
    /// name -> dependency names, from modules.dep (None: read modinfo)
    deps: Option<HashMap<String, Vec<String>>>,
    builtin: BTreeSet<String>,
}

fn read_to_string(path: &Path) -> Result<String, ModulesError> {
    std::fs::read_to_string(path).map_err(|source| ModulesError::Read {
        path: path.to_path_buf(),
        source,
    })
}

/// Collects the module files under `dir`, relative to `root`.
fn walk(root: &Path, dir: &Path, out: &mut HashMap<String, PathBuf>) -> Result<(), ModulesError> {
    let rd = std::fs::read_dir(dir).map_err(|source| ModulesError::Read {
        path: dir.to_path_buf(),
        source,
    })?;
    for entry in rd {
        let entry = entry.map_err(|source| ModulesError::Read {
            path: dir.to_path_buf(),
            source,
        })?;
        let path = entry.path();
        let ft = entry.file_type().map_err(|source| ModulesError::Read {
            path: path.clone(),
            source,
        })?;
        if ft.is_dir() {
            walk(root, &path, out)?;
        } else {
            let name = entry.file_name().to_string_lossy().to_string();
            if MODULE_SUFFIXES.iter().any(|s| name.ends_with(s)) {
                let rel = path.strip_prefix(root).unwrap_or(&path).to_path_buf();
                out.entry(canonical_name(&name)).or_insert(rel);
            }
        }
    }
    Ok(())
}

impl Index {
    fn load(dir: &Path) -> Result<Self, ModulesError> {
        let mut paths = HashMap::new();
        let mut deps = None;
        let dep_file = dir.join("modules.dep");
        if dep_file.is_file() {
            let mut map = HashMap::new();
            for line in read_to_string(&dep_file)?.lines() {
                let Some((module, rest)) = line.split_once(':') else {
                    continue;
                };
                let name = canonical_name(module.trim());
                let list = rest.split_whitespace().map(canonical_name).collect();
                paths.insert(name.clone(), PathBuf::from(module.trim()));
                map.insert(name, list);
            }
            deps = Some(map);
        } else {
            walk(dir, dir, &mut paths)?;
        }
        let builtin_file = dir.join("modules.builtin");
        let builtin = if builtin_file.is_file() {
            read_to_string(&builtin_file)?
                .lines()
                .filter(|l| !l.trim().is_empty())
                .map(|l| canonical_name(l.trim()))
                .collect()
        } else {
            BTreeSet::new()
        };
        Ok(Self {
            dir: dir.to_path_buf(),
            paths,
            deps,
            builtin,
        })
    }

    /// Returns the direct (or, from modules.dep, transitive) dependencies of a module.
    fn deps_of(&self, name: &str, rel: &Path) -> Result<Vec<String>, ModulesError> {
        if let Some(map) = &self.deps {
            return Ok(map.get(name).cloned().unwrap_or_default());
        }
        let path = self.dir.join(rel);
        if is_compressed(&path) {
            return Err(ModulesError::Compressed(path));
        }
        let bytes = std::fs::read(&path).map_err(|source| ModulesError::Read {
            path: path.clone(),
            source,
        })?;
        let info = elf::section(&bytes, ".modinfo")
            .map_err(|source| ModulesError::Elf {
                path: path.clone(),
                source,
            })?
            .unwrap_or_default();
        Ok(elf::modinfo_pairs(info)
            .into_iter()
            .filter(|(k, _)| k == "depends")
            .flat_map(|(_, v)| {
                v.split(',')
                    .filter(|s| !s.is_empty())
                    .map(canonical_name)
                    .collect::<Vec<_>>()
            })
            .collect())
    }
}

/// Resolves module names to the modules to load, dependencies first, each once. Built-in
/// modules are skipped; a name that is neither loadable nor built in is an error.
pub fn resolve_modules(modules_dir: &Path, names: &[&str]) -> Result<Vec<Module>, ModulesError> {
    let index = Index::load(modules_dir)?;
    let mut order = Vec::new();
    let mut done = BTreeSet::new();
    let mut active = BTreeMap::new();
    for name in names {
        visit(
            &index,
            &canonical_name(name),
            &mut order,
            &mut done,
            &mut active,
        )?;
    }
    Ok(order)
}

/// Depth-first post-order visit.
fn visit(
    index: &Index,
    name: &str,
    order: &mut Vec<Module>,
    done: &mut BTreeSet<String>,
    active: &mut BTreeMap<String, ()>,
) -> Result<(), ModulesError> {
    if done.contains(name) {
        return Ok(());
    }
    let Some(rel) = index.paths.get(name) else {
        if index.builtin.contains(name) {
            done.insert(name.to_string());
            return Ok(());
        }
        return Err(ModulesError::NotFound(name.to_string()));
    };
    if active.insert(name.to_string(), ()).is_some() {
        return Err(ModulesError::Cycle(name.to_string()));
    }
    for dep in index.deps_of(name, rel)? {
        visit(index, &dep, order, done, active)?;
    }
    active.remove(name);
    done.insert(name.to_string());
    order.push(Module {
        name: name.to_string(),
        relative: rel.clone(),
        path: index.dir.join(rel),
    });
    Ok(())
}

/// Resolves module names to absolute module paths in load order (dependencies first).
pub fn resolve(modules_dir: &Path, names: &[&str]) -> Result<Vec<PathBuf>, ModulesError> {
    Ok(resolve_modules(modules_dir, names)?
        .into_iter()
        .map(|m| m.path)
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A sample in the real format of a Debian 6.1 cloud kernel's modules.dep.
    const SAMPLE_DEP: &str = "\
kernel/drivers/virtio/virtio.ko:
kernel/drivers/virtio/virtio_ring.ko:
kernel/drivers/virtio/virtio_mmio.ko: kernel/drivers/virtio/virtio_ring.ko kernel/drivers/virtio/virtio.ko
kernel/drivers/virtio/virtio_pci_legacy_dev.ko:
kernel/drivers/virtio/virtio_pci_modern_dev.ko:
kernel/drivers/virtio/virtio_pci.ko: kernel/drivers/virtio/virtio_pci_legacy_dev.ko kernel/drivers/virtio/virtio_pci_modern_dev.ko kernel/drivers/virtio/virtio_ring.ko kernel/drivers/virtio/virtio.ko
kernel/drivers/block/virtio_blk.ko: kernel/drivers/virtio/virtio_ring.ko kernel/drivers/virtio/virtio.ko
kernel/drivers/misc/pvpanic/pvpanic.ko:
kernel/drivers/misc/pvpanic/pvpanic-mmio.ko: kernel/drivers/misc/pvpanic/pvpanic.ko
kernel/fs/fat/vfat.ko: kernel/fs/fat/fat.ko
kernel/fs/fat/fat.ko:
";
    const SAMPLE_BUILTIN: &str =
        "kernel/fs/ext4/ext4.ko\nkernel/fs/jbd2/jbd2.ko\nkernel/lib/crc16.ko\n";

    fn sample() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("modules.dep"), SAMPLE_DEP).unwrap();
        std::fs::write(dir.path().join("modules.builtin"), SAMPLE_BUILTIN).unwrap();
        dir
    }

    fn names(v: &[Module]) -> Vec<&str> {
        v.iter().map(|m| m.name.as_str()).collect()
    }

    fn pos(v: &[Module], n: &str) -> usize {
        v.iter().position(|m| m.name == n).unwrap()
    }

    #[test]
    fn resolves_in_dependency_order_from_modules_dep() {
        let dir = sample();
        let mods = resolve_modules(
            dir.path(),
            &["virtio_blk", "virtio_pci", "pvpanic-mmio", "ext4"],
        )
        .unwrap();
        assert_eq!(mods.len(), 8, "{:?}", names(&mods));
        assert!(pos(&mods, "virtio") < pos(&mods, "virtio_blk"));
        assert!(pos(&mods, "virtio_ring") < pos(&mods, "virtio_blk"));
        assert!(pos(&mods, "virtio_pci_modern_dev") < pos(&mods, "virtio_pci"));
        assert!(pos(&mods, "pvpanic") < pos(&mods, "pvpanic_mmio"));
        let pv = &mods[pos(&mods, "pvpanic_mmio")];
        assert_eq!(
            pv.relative,
            PathBuf::from("kernel/drivers/misc/pvpanic/pvpanic-mmio.ko")
        );
        assert_eq!(pv.path, dir.path().join(&pv.relative));
        // No duplicates.
        let set: BTreeSet<_> = names(&mods).into_iter().collect();
        assert_eq!(set.len(), mods.len());
    }

    #[test]
    fn dash_and_underscore_are_equivalent_and_builtins_skipped() {
        let dir = sample();
        let a = resolve(dir.path(), &["pvpanic_mmio"]).unwrap();
        let b = resolve(dir.path(), &["pvpanic-mmio"]).unwrap();
        assert_eq!(a, b);
        assert_eq!(a.len(), 2);
        assert!(resolve(dir.path(), &["ext4", "jbd2", "crc16"])
            .unwrap()
            .is_empty());
    }

    #[test]
    fn unknown_module_is_an_error() {
        let dir = sample();
        let err = resolve(dir.path(), &["virtio_blk", "no_such_mod"]).unwrap_err();
        assert!(matches!(err, ModulesError::NotFound(ref n) if n == "no_such_mod"));
        assert!(err.to_string().contains("neither"));
    }

    #[test]
    fn cycle_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("modules.dep"), "a.ko: b.ko\nb.ko: a.ko\n").unwrap();
        assert!(matches!(
            resolve(dir.path(), &["a"]),
            Err(ModulesError::Cycle(_))
        ));
    }

    /// Builds a minimal ELF64 file with a `.modinfo` section holding `modinfo`.
    fn fake_module(modinfo: &str) -> Vec<u8> {
        let shstrtab = b"\0.modinfo\0.shstrtab\0";
        let mut b = vec![0u8; 64];
        b[..4].copy_from_slice(b"\x7fELF");
        b[4] = 2; // 64-bit
        b[5] = 1; // little-endian
        b[6] = 1;
        let info_off = b.len();
        b.extend_from_slice(modinfo.as_bytes());
        let str_off = b.len();
        b.extend_from_slice(shstrtab);
        while !b.len().is_multiple_of(8) {
            b.push(0);
        }
        let shoff = b.len();
        let mut section = |name: u32, off: usize, size: usize| {
            let mut h = [0u8; 64];
            h[..4].copy_from_slice(&name.to_le_bytes());
            h[0x18..0x20].copy_from_slice(&(off as u64).to_le_bytes());
            h[0x20..0x28].copy_from_slice(&(size as u64).to_le_bytes());
            b.extend_from_slice(&h);
        };
        section(0, 0, 0);
        section(1, info_off, modinfo.len());
        section(10, str_off, shstrtab.len());
        b[0x28..0x30].copy_from_slice(&(shoff as u64).to_le_bytes());
        b[0x3a..0x3c].copy_from_slice(&64u16.to_le_bytes());
        b[0x3c..0x3e].copy_from_slice(&3u16.to_le_bytes());
        b[0x3e..0x40].copy_from_slice(&2u16.to_le_bytes());
        b
    }

    #[test]
    fn without_modules_dep_reads_modinfo_depends() {
        let dir = tempfile::tempdir().unwrap();
        let k = dir.path().join("kernel/drivers");
        std::fs::create_dir_all(k.join("virtio")).unwrap();
        std::fs::create_dir_all(k.join("block")).unwrap();
        let write = |rel: &str, info: &str| std::fs::write(k.join(rel), fake_module(info)).unwrap();
        write("virtio/virtio.ko", "license=GPL\0depends=\0name=virtio\0");
        write(
            "virtio/virtio_ring.ko",
            "depends=virtio\0name=virtio_ring\0",
        );
        write(
            "block/virtio_blk.ko",
            "depends=virtio_ring,virtio,crc16\0name=virtio_blk\0",
        );
        write("block/bad-dep.ko", "depends=missing_one\0");
        std::fs::write(dir.path().join("modules.builtin"), "kernel/lib/crc16.ko\n").unwrap();
        let mods = resolve_modules(dir.path(), &["virtio-blk"]).unwrap();
        assert_eq!(names(&mods), ["virtio", "virtio_ring", "virtio_blk"]);
        assert_eq!(
            mods[2].relative,
            PathBuf::from("kernel/drivers/block/virtio_blk.ko")
        );
        assert!(matches!(
            resolve(dir.path(), &["bad_dep"]),
            Err(ModulesError::NotFound(ref n)) if n == "missing_one"
        ));
        std::fs::write(k.join("block/junk.ko"), b"not an elf").unwrap();
        assert!(matches!(
            resolve(dir.path(), &["junk"]),
            Err(ModulesError::Elf { .. })
        ));
    }

    #[test]
    fn canonical_names() {
        assert_eq!(canonical_name("kernel/x/pvpanic-mmio.ko"), "pvpanic_mmio");
        assert_eq!(canonical_name("virtio_blk.ko.xz"), "virtio_blk");
        assert_eq!(canonical_name("virtio-blk"), "virtio_blk");
        assert!(is_compressed(Path::new("a.ko.zst")));
        assert!(!is_compressed(Path::new("a.ko")));
    }
}
