use super::*;
use crate::snapshot::manifest::{FileSum, tree_root};

fn sha(data: &[u8]) -> [u8; 32] {
    use sha2::Digest as _;
    sha2::Sha256::digest(data).into()
}

/// A file of three blocks: data, a hole, and a short tail.
fn three_blocks() -> (u64, Vec<[u8; 32]>) {
    let size = 2 * HASH_BLOCK + 10;
    (size, vec![sha(b"first"), zero_block(), sha(&[7u8; 10])])
}

/// The artifact and `cocoon.json` a push of that one file makes.
fn pushed() -> (ChunkIndex, Manifest, ArtifactManifest) {
    let (size, digests) = three_blocks();
    let file = file_chunks(size, &digests);
    let mut manifest = crate::snapshot::rebase::tests::manifest_fixture();
    manifest.files.insert(
        "memory-ranges".into(),
        FileSum {
            size,
            sha256: tree_root(&digests),
        }
        .into(),
    );
    let small = |t: &str| Descriptor::new(t, empty_digest(), 10);
    let mut layers = vec![small(MANIFEST_MEDIA_TYPE), small(INDEX_MEDIA_TYPE)];
    for (i, d) in &file.chunks {
        layers.push(Descriptor::new(
            CHUNK_MEDIA_TYPE,
            d.clone(),
            block_len(size, *i),
        ));
    }
    let artifact = ArtifactManifest {
        schema_version: 2,
        media_type: OCI_MANIFEST.into(),
        artifact_type: ARTIFACT_TYPE.into(),
        config: small(CONFIG_MEDIA_TYPE),
        layers,
        annotations: Default::default(),
    };
    let index = ChunkIndex {
        version: 1,
        block_size: HASH_BLOCK,
        files: [("memory-ranges".to_string(), file)].into(),
    };
    (index, manifest, artifact)
}

#[test]
fn holes_are_not_chunks_and_the_rest_are_fetched_once() {
    let (index, manifest, artifact) = pushed();
    let chunks = &index.files["memory-ranges"].chunks;
    assert_eq!(chunks.iter().map(|c| c.0).collect::<Vec<_>>(), [0, 2]);
    let fetch = check(&index, &manifest, &artifact).unwrap();
    assert_eq!(fetch.blocks.values().copied().collect::<Vec<_>>().len(), 2);
    assert_eq!(fetch.blocks.values().sum::<u64>(), HASH_BLOCK + 10);
    assert!(check_layers(&artifact).is_ok());
}

#[test]
fn an_empty_file_has_no_chunk_and_checks() {
    let (_, mut manifest, artifact) = pushed();
    manifest.files.clear();
    manifest.files.insert(
        "state.json".into(),
        FileSum {
            size: 0,
            sha256: tree_root(&[sha(b"")]),
        }
        .into(),
    );
    let file = file_chunks(0, &[sha(b"")]);
    assert!(file.chunks.is_empty());
    let index = ChunkIndex {
        version: 1,
        block_size: HASH_BLOCK,
        files: [("state.json".to_string(), file)].into(),
    };
    check(&index, &manifest, &artifact).unwrap();
}

fn refused(index: &ChunkIndex, manifest: &Manifest, artifact: &ArtifactManifest, expected: &str) {
    let err = check(index, manifest, artifact).expect_err("accepted");
    assert!(err.contains(expected), "{err}");
}

#[test]
fn an_index_that_does_not_add_up_is_refused() {
    let (index, manifest, artifact) = pushed();
    // A block the manifest does not list: the registry would serve any blob.
    let mut i = index.clone();
    i.files.get_mut("memory-ranges").unwrap().chunks[0].1 = digest_of(&sha(b"elsewhere"));
    refused(&i, &manifest, &artifact, "which the manifest does not list");
    // A block moved: the tree digest no longer matches cocoon.json.
    let mut i = index.clone();
    i.files.get_mut("memory-ranges").unwrap().chunks[0].0 = 1;
    refused(&i, &manifest, &artifact, "do not add up");
    // The short tail named as a whole block.
    let mut i = index.clone();
    let tail = i.files["memory-ranges"].chunks[1].1.clone();
    i.files.get_mut("memory-ranges").unwrap().chunks[0].1 = tail;
    refused(&i, &manifest, &artifact, "is 4194304 bytes but its blob");
    let mut i = index.clone();
    i.files.get_mut("memory-ranges").unwrap().chunks.swap(0, 1);
    refused(&i, &manifest, &artifact, "out of order");
    let mut i = index.clone();
    i.files.get_mut("memory-ranges").unwrap().chunks.remove(0);
    refused(&i, &manifest, &artifact, "do not add up");
    let mut i = index.clone();
    i.files.get_mut("memory-ranges").unwrap().chunks[1].0 = 9;
    refused(&i, &manifest, &artifact, "past the end");
    let mut i = index.clone();
    i.files.get_mut("memory-ranges").unwrap().size += 1;
    refused(&i, &manifest, &artifact, "the chunk index says");
    // Files other than cocoon.json's, or names that are paths.
    let mut i = index.clone();
    let f = i.files.remove("memory-ranges").unwrap();
    i.files.insert("../memory-ranges".into(), f);
    refused(&i, &manifest, &artifact, "the chunk index lists files");
    let mut m = manifest.clone();
    let sum = m.files.remove("memory-ranges").unwrap();
    m.files.insert("../memory-ranges".into(), sum);
    let mut i = index.clone();
    let f = i.files.remove("memory-ranges").unwrap();
    i.files.insert("../memory-ranges".into(), f);
    refused(&i, &m, &artifact, "is not a plain snapshot file name");
    // A huge declared size is summed as it is read, not held in memory.
    let mut m = manifest.clone();
    m.files.get_mut("memory-ranges").unwrap().size = 1 << 40;
    let mut i = index.clone();
    i.files.get_mut("memory-ranges").unwrap().size = 1 << 40;
    i.files.get_mut("memory-ranges").unwrap().chunks.truncate(1);
    refused(&i, &m, &artifact, "do not add up");
    let mut i = index;
    i.block_size = 1 << 20;
    refused(&i, &manifest, &artifact, "1048576-byte blocks");
}

#[test]
fn layers_of_another_shape_are_refused() {
    let (_, _, artifact) = pushed();
    let mut a = artifact.clone();
    a.artifact_type = UPSTREAM_ARTIFACT_TYPE.into();
    assert!(
        check_layers(&a)
            .unwrap_err()
            .contains("is not a chunked cocoon snapshot")
    );
    let mut a = artifact.clone();
    a.layers.truncate(1);
    assert_eq!(check_layers(&a).unwrap_err(), "fewer than two layers");
    let mut a = artifact.clone();
    a.layers[2].size = HASH_BLOCK + 1;
    assert!(check_layers(&a).unwrap_err().contains("expected a"));
    let mut a = artifact.clone();
    let dup = a.layers[2].clone();
    a.layers.push(dup);
    assert!(check_layers(&a).unwrap_err().contains("is listed twice"));
    let mut a = artifact.clone();
    a.layers[1].size = MAX_SMALL_BLOB + 1;
    assert!(
        check_layers(&a)
            .unwrap_err()
            .contains("expected application/vnd.cocoonstack.snapshot.chunks.v1+json")
    );
    let mut a = artifact;
    a.schema_version = 1;
    assert!(check_layers(&a).unwrap_err().contains("schemaVersion 1"));
}
