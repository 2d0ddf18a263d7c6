/*
 * cocoon test guest kernel: a tiny PVH kernel for Cloud Hypervisor and
 * Firecracker, written for cocoon's tests (stock Linux does not boot on the
 * PVM hosts the tests run on; this does).
 *
 * Serial protocol on COM1 (0x3f8):
 *   at boot      prints  "COCOON-TEST-GUEST READY tsc_khz=<n>\n"
 *   ~every 1 s   prints  "heartbeat <n>\n"            (n counts from 1)
 *   input '?'    prints  "count=<n>\n"
 *   input 'q'    prints  "poweroff\n" and powers off: ACPI S5 via port 0x600
 *                (Cloud Hypervisor), then an i8042 reset (Firecracker exits)
 *   keyboard input (Firecracker's SendCtrlAltDel) prints "ctrl-alt-del\n"
 *                and powers off the same way.
 *
 * It runs in 32-bit protected mode as PVH starts it (paging off, flat
 * segments, interrupts off) and polls; time comes from the TSC, whose rate
 * is read from CPUID (hypervisor leaf 0x40000010, else leaf 0x16).
 */

        .set COM1,        0x3f8
        .set ACPI_SHUTDOWN, 0x600
        .set I8042_DATA,  0x60
        .set I8042_CMD,   0x64

/* PVH entry point note: name "Xen", type XEN_ELFNOTE_PHYS32_ENTRY (18). */
        .section .note.Xen, "a", @note
        .balign 4
        .long 4
        .long 4
        .long 18
        .asciz "Xen"
        .balign 4
        .long pvh_start

        .code32
        .section .text
        .globl pvh_start
pvh_start:
        cli
        movl $stack_top, %esp
        call serial_init
        call tsc_rate

        movl $msg_ready, %esi
        call puts
        movl tsc_khz, %eax
        call put_u32
        movb $'\n', %al
        call putc

        call now_units
        movl %eax, last_beat

main_loop:
        /* Serial input? */
        movw $COM1+5, %dx
        inb %dx, %al
        testb $1, %al
        jz 1f
        movw $COM1, %dx
        inb %dx, %al
        cmpb $'?', %al
        je query
        cmpb $'q', %al
        je quit
1:
        /* Keyboard input (Ctrl-Alt-Del from Firecracker)? */
        movw $I8042_CMD, %dx
        inb %dx, %al
        cmpb $0xff, %al         /* no device at this port */
        je 2f
        testb $1, %al
        jz 2f
        movw $I8042_DATA, %dx
        inb %dx, %al
        movl $msg_cad, %esi
        call puts
        jmp poweroff
2:
        /* A second elapsed? */
        call now_units
        movl %eax, %ebx
        subl last_beat, %eax
        cmpl units_per_sec, %eax
        jb 3f
        movl %ebx, last_beat
        incl counter
        movl $msg_beat, %esi
        call puts
        movl counter, %eax
        call put_u32
        movb $'\n', %al
        call putc
3:
        call idle
        jmp main_loop

query:
        movl $msg_count, %esi
        call puts
        movl counter, %eax
        call put_u32
        movb $'\n', %al
        call putc
        jmp main_loop

quit:
        movl $msg_off, %esi
        call puts
poweroff:
        /* Wait for the transmitter to drain so the last line is not lost. */
        movw $COM1+5, %dx
4:      inb %dx, %al
        testb $0x40, %al
        jz 4b
        movw $ACPI_SHUTDOWN, %dx
        movb $0x34, %al         /* SLP_TYP=5 (S5) << 2 | SLP_EN (1 << 5) */
        outb %al, %dx
        movw $I8042_CMD, %dx
        movb $0xfe, %al         /* pulse the reset line */
        outb %al, %dx
5:      hlt
        jmp 5b

/* Spin about 0.1 ms (or until the TSC moves by 2^17 cycles), so the poll
 * loop does not trap into the VMM thousands of times a millisecond. */
idle:
        rdtsc
        shrdl $17, %edx, %eax
        movl %eax, %ecx
6:      pause
        rdtsc
        shrdl $17, %edx, %eax
        cmpl %ecx, %eax
        je 6b
        ret

/* eax = TSC / 2^20 */
now_units:
        rdtsc
        shrdl $20, %edx, %eax
        ret

/* tsc_khz and units_per_sec (TSC ticks per second / 2^20). */
tsc_rate:
        movl $0x40000000, %eax
        cpuid
        cmpl $0x40000010, %eax
        jb 7f
        movl $0x40000010, %eax
        cpuid
        testl %eax, %eax
        jnz 9f
7:      xorl %eax, %eax
        cpuid
        cmpl $0x16, %eax
        jb 8f
        movl $0x16, %eax
        cpuid
        andl $0xffff, %eax
        jz 8f
        imull $1000, %eax       /* MHz -> kHz */
        jmp 9f
8:      movl $2000000, %eax     /* unknown: assume 2 GHz */
9:      movl %eax, tsc_khz
        movl $1000, %ecx
        mull %ecx               /* edx:eax = Hz */
        shrdl $20, %edx, %eax
        movl %eax, units_per_sec
        ret

serial_init:
        movw $COM1+1, %dx
        xorb %al, %al
        outb %al, %dx           /* no interrupts */
        movw $COM1+3, %dx
        movb $0x80, %al
        outb %al, %dx           /* DLAB */
        movw $COM1, %dx
        movb $1, %al
        outb %al, %dx           /* 115200 baud */
        movw $COM1+1, %dx
        xorb %al, %al
        outb %al, %dx
        movw $COM1+3, %dx
        movb $0x03, %al
        outb %al, %dx           /* 8N1 */
        movw $COM1+2, %dx
        movb $0xc7, %al
        outb %al, %dx           /* FIFO on, cleared */
        movw $COM1+4, %dx
        movb $0x0b, %al
        outb %al, %dx           /* DTR, RTS, OUT2 */
        ret

/* al = byte */
putc:
        movb %al, %ah
        movw $COM1+5, %dx
10:     inb %dx, %al
        testb $0x20, %al
        jz 10b
        movb %ah, %al
        movw $COM1, %dx
        outb %al, %dx
        ret

/* esi = NUL-terminated string */
puts:
        lodsb
        testb %al, %al
        jz 11f
        call putc
        jmp puts
11:     ret

/* eax = value, printed in decimal */
put_u32:
        movl $numbuf_end, %edi
        movl $10, %ecx
12:     xorl %edx, %edx
        divl %ecx
        addb $'0', %dl
        decl %edi
        movb %dl, (%edi)
        testl %eax, %eax
        jnz 12b
13:     cmpl $numbuf_end, %edi
        je 14f
        movb (%edi), %al
        pushl %edi
        call putc
        popl %edi
        incl %edi
        jmp 13b
14:     ret

        .section .rodata
msg_ready: .asciz "COCOON-TEST-GUEST READY tsc_khz="
msg_beat:  .asciz "heartbeat "
msg_count: .asciz "count="
msg_off:   .asciz "poweroff\n"
msg_cad:   .asciz "ctrl-alt-del\n"

        .section .data
        .balign 4
counter:       .long 0
last_beat:     .long 0
units_per_sec: .long 1
tsc_khz:       .long 0

        .section .bss
        .balign 16
numbuf:  .space 12
numbuf_end:
        .balign 16
stack:   .space 8192
stack_top:
