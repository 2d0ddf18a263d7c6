//! Progress as bytes of file content handled, holes included, so a caller
//! can show it against the sum of the manifest's sizes.

pub(super) struct Progress<'a> {
    done: u64,
    report: &'a mut dyn FnMut(u64),
}

impl<'a> Progress<'a> {
    pub fn new(report: &'a mut dyn FnMut(u64)) -> Self {
        Progress { done: 0, report }
    }

    pub fn advance(&mut self, bytes: u64) {
        if bytes > 0 {
            self.done += bytes;
            (self.report)(self.done);
        }
    }
}
