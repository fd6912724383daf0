# Windows 98 SE + SoftGPU for loco, built unattended by Packer's QEMU builder from YOUR OWN
# Windows 98 SE CD image and product key (loco never downloads or ships Windows).
#
#   packer init packer/win98
#   packer build -var-file=my-win98.pkrvars.hcl packer/win98
#
# See packer/README.md for what you supply, what happens, and how long it takes. The virtual
# hardware (machine, CPU, memory, display, pointer, sound card, the guest LAN's NIC) comes from
# packer/qemu-args.json, the same file scripts/up.py and the VM runner read, so the image is built
# on what it runs on.

packer {
  required_plugins {
    qemu = {
      version = ">= 1.1.0"
      source  = "github.com/hashicorp/qemu"
    }
  }
}

variable "iso_path" {
  type        = string
  default     = ""
  description = "Path to your own Windows 98 Second Edition CD image (.iso)."
  validation {
    condition     = length(trimspace(var.iso_path)) > 0
    error_message = "The variable iso_path is missing: pass your own Windows 98 SE CD image, e.g. -var 'iso_path=/isos/win98se.iso' (loco does not download or ship Windows; see packer/README.md)."
  }
  validation {
    condition     = fileexists(var.iso_path) || length(trimspace(var.iso_path)) == 0
    error_message = "The file named by iso_path does not exist."
  }
}

variable "iso_checksum" {
  type        = string
  default     = ""
  description = "Checksum of that ISO as Packer wants it, e.g. \"sha256:<hex>\" (sha256sum win98se.iso)."
  validation {
    condition     = can(regex("^(md5|sha1|sha256|sha512):[0-9a-fA-F]{32,128}$", var.iso_checksum)) || can(regex("^file:.+", var.iso_checksum)) || var.iso_checksum == "none"
    error_message = "The variable iso_checksum is missing or malformed: give \"sha256:<64 hex digits>\" of your ISO (run: sha256sum win98se.iso), or \"none\" to skip the check."
  }
}

variable "product_key" {
  type        = string
  default     = ""
  sensitive   = true
  description = "Your Windows 98 SE product key, XXXXX-XXXXX-XXXXX-XXXXX-XXXXX."
  validation {
    condition     = can(regex("^[A-Za-z0-9]{5}(-[A-Za-z0-9]{5}){4}$", var.product_key))
    error_message = "The variable product_key is missing or malformed: give the 25-character key from your Windows 98 SE certificate of authenticity as XXXXX-XXXXX-XXXXX-XXXXX-XXXXX."
  }
}

variable "softgpu_dir" {
  type        = string
  default     = ""
  description = "The folder you unpacked SoftGPU's release zip into (JHRobotics/softgpu; it holds softgpu.exe)."
  validation {
    condition     = length(trimspace(var.softgpu_dir)) > 0 && fileexists("${var.softgpu_dir}/softgpu.exe")
    error_message = "The variable softgpu_dir is missing, or has no softgpu.exe: download SoftGPU's release zip from https://github.com/JHRobotics/softgpu/releases, unzip it (unzip softgpu-*.zip -d softgpu) and pass -var 'softgpu_dir=softgpu'."
  }
}

variable "output_dir" {
  type        = string
  default     = "output-win98"
  description = "Where Packer writes win98-softgpu.qcow2 (must not exist yet)."
}

variable "disk_size" {
  type        = string
  default     = "2048M"
  description = "Size of C: (FAT32) in MiB, e.g. 2048M. 2 GiB holds Windows 98 SE, DirectX 9 and SoftGPU with room to spare."
  validation {
    condition     = can(regex("^[0-9]+M$", var.disk_size)) && try(tonumber(trimsuffix(var.disk_size, "M")) >= 512, false) && try(tonumber(trimsuffix(var.disk_size, "M")) <= 32768, false)
    error_message = "The variable disk_size must be a size in MiB from 512M to 32768M, e.g. 2048M."
  }
}

variable "accelerator" {
  type        = string
  default     = "kvm"
  description = "kvm (fast), or tcg where /dev/kvm is unusable (several times slower)."
  validation {
    condition     = contains(["kvm", "tcg"], var.accelerator)
    error_message = "The variable accelerator must be \"kvm\" or \"tcg\"."
  }
}

variable "seabios_path" {
  type        = string
  default     = ""
  description = "Optional: a SeaBIOS bios.bin built without CONFIG_PNPBIOS (see softgpu's qemu.md). Empty: QEMU's own BIOS (then apply the PCI-bus fix by hand, packer/README.md). If you set it, run the image with the same -bios."
}

variable "lan_file_sharing" {
  type        = bool
  default     = false
  description = "Also install Client for Microsoft Networks and File and Printer Sharing, so the VMs can share folders and see each other in Network Neighborhood. Off by default: it adds a logon step at startup, and every VM has the same computer name (packer/README.md, \"The guest LAN (Windows 98)\")."
}

variable "headless" {
  type    = bool
  default = true
}

locals {
  # The run-time virtual hardware, shared with scripts/up.py and the VM runner.
  rt = jsondecode(file("${path.root}/../qemu-args.json")).profiles.win98

  bios_args = var.seabios_path == "" ? [] : [["-bios", var.seabios_path]]

  # The guest LAN's NIC (lan_nic, the NE2000 PCI) is in the build VM, so Setup detects it and binds
  # the protocols of MSBATCH.INF to it; it is the only NIC and lands in the same PCI slot as at run
  # time. Its network goes nowhere: user-mode with restrict=on answers DHCP (so Windows' DHCP client
  # gets an address while it builds) but routes nothing to the host or the internet. The id is Packer's own
  # (user.0), so these replace Packer's default -netdev and NIC instead of adding a second one.
  build_nic = [
    ["-netdev", "user,id=user.0,restrict=on"],
    ["-device", "${local.rt.lan_nic},netdev=user.0"],
  ]

  # The sound card (sound: the ISA Sound Blaster 16 at 220h, IRQ 5, DMA 1/5) is in the build VM too, so
  # Setup's legacy-hardware detection finds it and installs Windows 98's own driver for it (packer/
  # README.md, "Sound (Windows 98)"). It plays into nothing (-audiodev none), as at run time.
  build_sound = [
    ["-audiodev", "none,id=${local.rt.sound.audiodev}"],
    local.rt.sound.device,
  ]

  qemuargs = concat(
    [["-machine", local.rt.machine], ["-cpu", local.rt.cpu], ["-m", tostring(local.rt.memory_mb)]],
    local.rt.devices,
    local.build_sound,
    local.build_nic,
    local.bios_args,
  )

  # FDISK /PRI takes MB; leave the last few for the partition table's rounding.
  partition_mb = tonumber(trimsuffix(var.disk_size, "M")) - 8

  msbatch = templatefile("${path.root}/msbatch.inf.pkrtpl", {
    product_key = upper(var.product_key)
    # [Network] Clients= and Services=: Client for Microsoft Networks (VREDIR) and File and
    # Printer Sharing for Microsoft Networks (VSERVER) with lan_file_sharing, else none.
    clients  = var.lan_file_sharing ? "VREDIR" : ""
    services = var.lan_file_sharing ? "VSERVER" : ""
  })
}

source "qemu" "win98" {
  iso_url      = var.iso_path
  iso_checksum = var.iso_checksum

  output_directory = var.output_dir
  vm_name          = local.rt.image
  format           = local.rt.disk.format
  disk_interface   = local.rt.disk.interface
  disk_size        = var.disk_size
  accelerator      = var.accelerator
  cpus             = local.rt.smp
  memory           = local.rt.memory_mb
  net_device       = local.rt.lan_nic # the model of local.build_nic's -device (Packer adds no other NIC)
  headless         = var.headless
  vnc_bind_address = "127.0.0.1"
  qemuargs         = local.qemuargs

  # MSBATCH.INF (your key filled in) and loco's after-setup scripts on a floppy (B: while
  # booted from the CD, A: once Windows runs); SoftGPU on a second CD.
  floppy_content = {
    "MSBATCH.INF" = local.msbatch
  }
  floppy_files = [
    "${path.root}/files/LOCOPOST.BAT",
    "${path.root}/files/DISPLAY.REG",
  ]
  cd_files = ["${var.softgpu_dir}/*"]
  cd_label = "SOFTGPU"

  # Windows 98 SE's CD boot menu -> "Start computer with CD-ROM support" -> DOS prompt;
  # then FDISK (whole disk, FAT32), reboot, FORMAT, and SETUP with MSBATCH.INF.
  boot_wait = "5s"
  boot_command = [
    "2<enter><wait10>",                           # Boot from CD-ROM
    "2<enter><wait60>",                           # Start computer with CD-ROM support
    "fdisk 1 /pri:${local.partition_mb}<enter><wait10>",  # one primary FAT32 partition over the disk
    "<leftCtrlOn><leftAltOn><del><leftAltOff><leftCtrlOff><wait10>",  # reboot: the partition is seen
    "2<enter><wait10>2<enter><wait60>",
    "format c: /q /u /autotest<enter><wait30>",
    "%CDROM%\\win98\\setup.exe B:\\MSBATCH.INF /IS /IQ /IE /IM /IV /NF<enter>",
  ]

  # Setup (three reboots), then LOCOPOST.BAT from RunOnce installs SoftGPU, sets
  # 1024x768x32 and shuts Windows down; Packer waits for that.
  communicator     = "none"
  shutdown_timeout = "3h"
}

build {
  name    = "win98-softgpu"
  sources = ["source.qemu.win98"]

  post-processor "shell-local" {
    inline = [
      "qemu-img check ${var.output_dir}/${local.rt.image}",
      "echo 'win98-softgpu: built ${var.output_dir}/${local.rt.image}; run it with: ./loco up --image ${var.output_dir}/${local.rt.image}'",
    ]
  }
}
