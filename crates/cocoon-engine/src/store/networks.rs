//! CNI leases, one per NIC, kept so DEL can be given what ADD returned and a
//! rebuilt network after a host reboot gets the same address back.

use rusqlite::params;

use super::events::append;
use super::{ObjectKind, Result, Store, from_json, to_json};
use crate::model::NetworkLease;

const KIND: ObjectKind = ObjectKind::Network;

impl Store {
    /// Records (or replaces) the lease of one VM interface.
    pub fn put_lease(&mut self, lease: &NetworkLease) -> Result<()> {
        self.write(|tx| {
            let doc = to_json(lease);
            tx.execute(
                "INSERT INTO networks (id, vm_id, if_name, doc) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (vm_id, if_name) DO UPDATE SET id = ?1, doc = ?4",
                params![lease.id, lease.vm_id, lease.if_name, doc],
            )?;
            append(tx, KIND, &lease.id, "created", Some(&doc))?;
            Ok(())
        })
    }

    /// The leases of one VM, by interface name.
    pub fn leases(&mut self, vm_id: &str) -> Result<Vec<NetworkLease>> {
        self.read(|tx| {
            let mut stmt = tx
                .prepare_cached("SELECT id, doc FROM networks WHERE vm_id = ?1 ORDER BY if_name")?;
            let rows = stmt
                .query_map([vm_id], |r| {
                    Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?))
                })?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            rows.iter()
                .map(|(id, doc)| from_json(KIND, id, doc))
                .collect()
        })
    }

    pub fn delete_leases(&mut self, vm_id: &str) -> Result<usize> {
        self.write(|tx| {
            let ids: Vec<String> = tx
                .prepare_cached("SELECT id FROM networks WHERE vm_id = ?1")?
                .query_map([vm_id], |r| r.get(0))?
                .collect::<rusqlite::Result<_>>()?;
            tx.execute("DELETE FROM networks WHERE vm_id = ?1", [vm_id])?;
            for id in &ids {
                append(tx, KIND, id, "deleted", None)?;
            }
            Ok(ids.len())
        })
    }

    /// Forgets the lease of one VM interface (a NIC `vm net` removed).
    pub fn delete_lease(&mut self, vm_id: &str, if_name: &str) -> Result<()> {
        self.write(|tx| {
            let ids: Vec<String> = tx
                .prepare_cached("SELECT id FROM networks WHERE vm_id = ?1 AND if_name = ?2")?
                .query_map(params![vm_id, if_name], |r| r.get(0))?
                .collect::<rusqlite::Result<_>>()?;
            tx.execute(
                "DELETE FROM networks WHERE vm_id = ?1 AND if_name = ?2",
                params![vm_id, if_name],
            )?;
            for id in &ids {
                append(tx, KIND, id, "deleted", None)?;
            }
            Ok(())
        })
    }
}
