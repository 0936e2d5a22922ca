//! The OVF descriptor VirtualBox imports, and the SHA-256 manifest beside it (docs/design.md §8).
//!
//! One virtual system: two CPUs and 2 GiB by default, EFI firmware, the disk on a VirtioSCSI
//! controller and a virtio-net NIC on NAT. Debian's cloud kernel has no AHCI or e1000 driver, so
//! VirtualBox's defaults (SATA, Intel NIC) would not boot or would have no network. The generic
//! OVF items describe that hardware to any importer; the `vbox:Machine` section says the rest in
//! VirtualBox's own settings format (firmware, chipset, NIC type, the bootable controller), which
//! VirtualBox prefers when present. OVF 1.0 envelope, the version every importer reads.
//!
//! Nothing here is random: the machine UUID and the MAC (VirtualBox's OUI 08:00:27) are derived
//! from the disk's content digest and the VM name, the disk UUID is the VMDK's own.

use std::fmt::Write as _;

use uuid::Uuid;

use crate::vmdk::{VmdkInfo, derive_uuid};

/// VirtualBox's OUI: the first three bytes of every MAC it hands out.
pub const VIRTUALBOX_OUI: [u8; 3] = [0x08, 0x00, 0x27];
pub const DEFAULT_CPUS: u32 = 2;
pub const DEFAULT_MEMORY_MIB: u32 = 2048;
/// The `ovf:format` of a streamOptimized VMDK.
const VMDK_STREAM_FORMAT: &str = "http://www.vmware.com/interfaces/specifications/vmdk.html#streamOptimized";
/// VirtualBox's settings version that knows VirtioSCSI controllers (VirtualBox 6.1 and later).
const VBOX_SETTINGS_VERSION: &str = "1.19-linux";
/// VirtualBox's guest OS type for a 64-bit Linux it has no special knowledge of.
const OS_TYPE: &str = "Linux26_64";

/// Everything the descriptor says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OvfParams {
    /// The virtual machine's name.
    pub name: String,
    /// The VMDK's file name inside the package (`ovf:href`).
    pub disk_file: String,
    /// The VMDK file's length in bytes (`ovf:size`).
    pub disk_file_size: u64,
    /// The virtual disk's size in bytes.
    pub capacity: u64,
    /// Bytes of the disk that hold data (`ovf:populatedSize`).
    pub populated: u64,
    pub disk_uuid: Uuid,
    pub machine_uuid: Uuid,
    pub mac: [u8; 6],
    pub cpus: u32,
    pub memory_mib: u32,
}

impl OvfParams {
    /// Parameters for the VMDK `disk_file` that [`crate::vmdk::write`] described as `vmdk`, with
    /// the default CPUs and memory and the IDs derived from its content and `name`.
    pub fn for_disk(name: &str, disk_file: &str, vmdk: &VmdkInfo) -> Self {
        let mut seed = name.as_bytes().to_vec();
        seed.push(0);
        let machine_uuid = derive_uuid(&vmdk.content_digest, &[b"vbox:Machine\0".as_slice(), &seed].concat());
        let mac_bytes = derive_uuid(&vmdk.content_digest, &[b"MAC\0".as_slice(), &seed].concat());
        let m = mac_bytes.as_bytes();
        OvfParams {
            name: name.to_string(),
            disk_file: disk_file.to_string(),
            disk_file_size: vmdk.bytes,
            capacity: vmdk.capacity,
            populated: vmdk.populated,
            disk_uuid: vmdk.uuid,
            machine_uuid,
            mac: [VIRTUALBOX_OUI[0], VIRTUALBOX_OUI[1], VIRTUALBOX_OUI[2], m[0], m[1], m[2]],
            cpus: DEFAULT_CPUS,
            memory_mib: DEFAULT_MEMORY_MIB,
        }
    }

    /// The MAC as VirtualBox's settings and Vagrant's `config.vm.base_mac` write it:
    /// twelve upper-case hex digits, no separators.
    pub fn mac_hex(&self) -> String {
        self.mac.iter().map(|b| format!("{b:02X}")).collect()
    }
}

/// The OVF descriptor (XML, UTF-8, ending in a newline).
pub fn descriptor(p: &OvfParams) -> String {
    let name = xml_escape(&p.name);
    let href = xml_escape(&p.disk_file);
    let disk_uuid = p.disk_uuid.hyphenated();
    format!(
        r#"<?xml version="1.0" encoding="UTF-8"?>
<Envelope ovf:version="1.0" xml:lang="en-US" xmlns="http://schemas.dmtf.org/ovf/envelope/1" xmlns:ovf="http://schemas.dmtf.org/ovf/envelope/1" xmlns:rasd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_ResourceAllocationSettingData" xmlns:vssd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_VirtualSystemSettingData" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" xmlns:vbox="http://www.virtualbox.org/ovf/machine">
  <References>
    <File ovf:id="file1" ovf:href="{href}" ovf:size="{size}"/>
  </References>
  <DiskSection>
    <Info>The virtual disk of the appliance</Info>
    <Disk ovf:diskId="vmdisk1" ovf:fileRef="file1" ovf:capacity="{capacity}" ovf:capacityAllocationUnits="byte" ovf:populatedSize="{populated}" ovf:format="{format}" vbox:uuid="{disk_uuid}"/>
  </DiskSection>
  <NetworkSection>
    <Info>The logical network the appliance's NIC is attached to</Info>
    <Network ovf:name="NAT">
      <Description>Network address translation by the hypervisor</Description>
    </Network>
  </NetworkSection>
  <VirtualSystem ovf:id="{name}">
    <Info>A Berth virtual machine</Info>
    <Name>{name}</Name>
    <OperatingSystemSection ovf:id="100">
      <Info>The guest operating system</Info>
      <Description>{os}</Description>
      <vbox:OSType ovf:required="false">{os}</vbox:OSType>
    </OperatingSystemSection>
{hardware}{machine}  </VirtualSystem>
</Envelope>
"#,
        size = p.disk_file_size,
        capacity = p.capacity,
        populated = p.populated,
        format = VMDK_STREAM_FORMAT,
        os = OS_TYPE,
        hardware = hardware_section(p),
        machine = vbox_machine(p),
    )
}

/// The generic hardware every OVF importer reads: CPUs, memory, the VirtioSCSI controller with
/// the disk on it, the virtio-net NIC on NAT.
fn hardware_section(p: &OvfParams) -> String {
    let name = xml_escape(&p.name);
    let (cpus, mem) = (p.cpus, p.memory_mib);
    format!(
        r#"    <VirtualHardwareSection>
      <Info>Virtual hardware: CPUs, memory, a VirtioSCSI disk and a virtio-net NIC</Info>
      <System>
        <vssd:ElementName>Virtual Hardware Family</vssd:ElementName>
        <vssd:InstanceID>0</vssd:InstanceID>
        <vssd:VirtualSystemIdentifier>{name}</vssd:VirtualSystemIdentifier>
        <vssd:VirtualSystemType>virtualbox-2.2</vssd:VirtualSystemType>
      </System>
      <Item>
        <rasd:Caption>{cpus} virtual CPUs</rasd:Caption>
        <rasd:Description>Number of virtual CPUs</rasd:Description>
        <rasd:ElementName>{cpus} virtual CPUs</rasd:ElementName>
        <rasd:InstanceID>1</rasd:InstanceID>
        <rasd:ResourceType>3</rasd:ResourceType>
        <rasd:VirtualQuantity>{cpus}</rasd:VirtualQuantity>
      </Item>
      <Item>
        <rasd:AllocationUnits>MegaBytes</rasd:AllocationUnits>
        <rasd:Caption>{mem} MB of memory</rasd:Caption>
        <rasd:Description>Memory size</rasd:Description>
        <rasd:ElementName>{mem} MB of memory</rasd:ElementName>
        <rasd:InstanceID>2</rasd:InstanceID>
        <rasd:ResourceType>4</rasd:ResourceType>
        <rasd:VirtualQuantity>{mem}</rasd:VirtualQuantity>
      </Item>
      <Item>
        <rasd:Address>0</rasd:Address>
        <rasd:Caption>virtioSCSIController0</rasd:Caption>
        <rasd:Description>VirtioSCSI Controller</rasd:Description>
        <rasd:ElementName>virtioSCSIController0</rasd:ElementName>
        <rasd:InstanceID>3</rasd:InstanceID>
        <rasd:ResourceSubType>VirtioSCSI</rasd:ResourceSubType>
        <rasd:ResourceType>20</rasd:ResourceType>
      </Item>
      <Item>
        <rasd:AddressOnParent>0</rasd:AddressOnParent>
        <rasd:Caption>disk1</rasd:Caption>
        <rasd:Description>Disk Image</rasd:Description>
        <rasd:ElementName>disk1</rasd:ElementName>
        <rasd:HostResource>/disk/vmdisk1</rasd:HostResource>
        <rasd:InstanceID>4</rasd:InstanceID>
        <rasd:Parent>3</rasd:Parent>
        <rasd:ResourceType>17</rasd:ResourceType>
      </Item>
      <Item>
        <rasd:AutomaticAllocation>true</rasd:AutomaticAllocation>
        <rasd:Caption>Ethernet adapter on 'NAT'</rasd:Caption>
        <rasd:Connection>NAT</rasd:Connection>
        <rasd:ElementName>Ethernet adapter on 'NAT'</rasd:ElementName>
        <rasd:InstanceID>5</rasd:InstanceID>
        <rasd:ResourceSubType>virtio-net</rasd:ResourceSubType>
        <rasd:ResourceType>10</rasd:ResourceType>
      </Item>
    </VirtualHardwareSection>
"#
    )
}

/// VirtualBox's own description of the machine, which it prefers to the generic items: EFI,
/// ICH9, the NIC's type and MAC, the bootable VirtioSCSI controller with the disk attached.
fn vbox_machine(p: &OvfParams) -> String {
    let name = xml_escape(&p.name);
    let disk_uuid = p.disk_uuid.hyphenated();
    let machine_uuid = p.machine_uuid.hyphenated();
    let mac = p.mac_hex();
    let (cpus, mem) = (p.cpus, p.memory_mib);
    format!(
        r#"    <vbox:Machine ovf:required="false" version="{vbox_version}" uuid="{{{machine_uuid}}}" name="{name}" OSType="{os}" snapshotFolder="Snapshots">
      <ovf:Info>The machine in VirtualBox's own settings format</ovf:Info>
      <Hardware>
        <CPU count="{cpus}">
          <PAE enabled="true"/>
          <LongMode enabled="true"/>
          <X2APIC enabled="true"/>
          <HardwareVirtExLargePages enabled="false"/>
        </CPU>
        <Memory RAMSize="{mem}"/>
        <Firmware type="EFI"/>
        <Chipset type="ICH9"/>
        <BIOS>
          <IOAPIC enabled="true"/>
        </BIOS>
        <Display controller="VMSVGA" VRAMSize="16"/>
        <RTC localOrUTC="UTC"/>
        <Network>
          <Adapter slot="0" enabled="true" MACAddress="{mac}" cable="true" type="virtio">
            <NAT localhost-reachable="true"/>
          </Adapter>
        </Network>
        <AudioAdapter enabled="false"/>
        <StorageControllers>
          <StorageController name="VirtioSCSI" type="VirtioSCSI" PortCount="1" useHostIOCache="false" Bootable="true">
            <AttachedDevice type="HardDisk" hotpluggable="false" port="0" device="0">
              <Image uuid="{{{disk_uuid}}}"/>
            </AttachedDevice>
          </StorageController>
        </StorageControllers>
      </Hardware>
    </vbox:Machine>
"#,
        os = OS_TYPE,
        vbox_version = VBOX_SETTINGS_VERSION,
    )
}

/// The manifest: one `SHA256(<file>)= <hex>` line per file, in the order given.
pub fn manifest(files: &[(&str, [u8; 32])]) -> String {
    let mut m = String::new();
    for (name, digest) in files {
        let _ = write!(m, "SHA256({name})= ");
        for b in digest {
            let _ = write!(m, "{b:02x}");
        }
        m.push('\n');
    }
    m
}

/// Escapes text for an XML attribute value or element content.
pub fn xml_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params() -> OvfParams {
        let info = VmdkInfo {
            bytes: 1536,
            capacity: 1 << 30,
            populated: 65536,
            content_digest: [9; 32],
            cid: 1,
            uuid: derive_uuid(&[9; 32], b"ddb.uuid.image"),
        };
        OvfParams::for_disk("a<b>&\"c'", "disk.vmdk", &info)
    }

    #[test]
    fn every_value_is_escaped() {
        let x = descriptor(&params());
        assert!(x.contains(r#"ovf:id="a&lt;b&gt;&amp;&quot;c&apos;""#), "{x}");
        assert!(!x.contains("a<b>"));
    }

    #[test]
    fn mac_has_virtualbox_oui_and_ids_are_derived() {
        let p = params();
        assert!(p.mac_hex().starts_with("080027"));
        assert_eq!(p.mac_hex().len(), 12);
        assert_eq!(p, params());
        assert_ne!(p.machine_uuid, p.disk_uuid);
    }

    #[test]
    fn manifest_lines() {
        let m = manifest(&[("x.ovf", [0xab; 32])]);
        assert_eq!(m, format!("SHA256(x.ovf)= {}\n", "ab".repeat(32)));
    }
}
