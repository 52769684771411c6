//! Replays every kept fuzz input (`fuzz/corpus/<target>/`) through its target's property check,
//! on the stable toolchain: the corpus stays a regression suite without cargo-fuzz.

use std::{fs, path::PathBuf};

/// Runs every file of the target's corpus through `check`; a failure names the file.
fn replay(target: &str, check: fn(&[u8])) {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus")
        .join(target);
    let mut files: Vec<PathBuf> = fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.expect("a directory entry").path())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no corpus in {}", dir.display());
    for path in files {
        let input = fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        eprintln!("replaying {}", path.display());
        check(&input);
    }
}

macro_rules! corpus_tests {
    ($($target:ident),* $(,)?) => {$(
        #[test]
        fn $target() {
            replay(stringify!($target), fuzzing::$target);
        }
    )*};
}

// One test per fuzz target, named after it (and its corpus directory).
corpus_tests!(
    frame_codec,
    envelope,
    ws_bytes,
    ws_frames,
    gossip_record,
    datagram,
    mesh_payload,
    quorum_message,
);
