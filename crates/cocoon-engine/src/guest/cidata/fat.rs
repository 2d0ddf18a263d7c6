//! A 1 MiB FAT12 volume holding a few small files, built in memory.

use std::io::{self, Cursor, Write};

use fatfs::{
    Date, DateTime, FatType, FileSystem, FormatVolumeOptions, FsOptions, Time, TimeProvider,
};

/// cocoon's geometry: 2048 sectors of 512 bytes.
pub const IMAGE_BYTES: usize = 1 << 20;
/// What cloud-init's NoCloud source looks for (`LABEL=cidata`).
pub const LABEL: &[u8; 11] = b"cidata     ";

/// Stamps files with the current UTC time (fatfs would use 1980-01-01).
#[derive(Debug)]
struct Now;

impl Now {
    fn parts() -> (Date, Time) {
        let now = jiff::Timestamp::now().to_zoned_datetime(jiff::tz::TimeZone::UTC);
        // FAT dates cover 1980..=2107.
        let year = now.year().clamp(1980, 2107) as u16;
        (
            Date {
                year,
                month: now.month() as u16,
                day: now.day() as u16,
            },
            Time {
                hour: now.hour() as u16,
                min: now.minute() as u16,
                sec: now.second() as u16,
                millis: now.millisecond() as u16,
            },
        )
    }
}

impl TimeProvider for Now {
    fn get_current_date(&self) -> Date {
        Now::parts().0
    }
    fn get_current_date_time(&self) -> DateTime {
        let (date, time) = Now::parts();
        DateTime { date, time }
    }
}

static NOW: Now = Now;

/// A FAT12 image labelled `cidata` with volume id `volume_id`, holding
/// `files` (name, content) in the root directory in the given order.
pub fn build(volume_id: u32, files: &[(&str, &[u8])]) -> io::Result<Vec<u8>> {
    let mut disk = Cursor::new(vec![0u8; IMAGE_BYTES]);
    fatfs::format_volume(
        &mut disk,
        FormatVolumeOptions::new()
            .fat_type(FatType::Fat12)
            .bytes_per_sector(512)
            .total_sectors(u32::try_from(IMAGE_BYTES / 512).expect("a small image"))
            .volume_label(*LABEL)
            // fatfs would write 0x12345678 into every volume.
            .volume_id(volume_id),
    )?;
    disk.set_position(0);
    {
        let fs = FileSystem::new(&mut disk, FsOptions::new().time_provider(&NOW))?;
        let root = fs.root_dir();
        for (name, content) in files {
            let mut file = root.create_file(name)?;
            file.truncate()?;
            file.write_all(content)?;
            file.flush()?;
        }
        drop(root);
        fs.unmount()?;
    }
    Ok(disk.into_inner())
}
