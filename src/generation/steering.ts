/**
 * Which socket of a worker group's SO_REUSEPORT group takes a new connection
 * (TCP) or datagram (UDP): a classic BPF program on the group
 * (SO_ATTACH_REUSEPORT_CBPF). It hashes the peer's address and port, so a
 * client's flow keeps going to one socket (UDP "connections", QUIC), and maps
 * the hash onto the sockets whose worker serves: a dead worker's, a worker
 * being replaced, or one left over when the group shrank get nothing new, where
 * otherwise the kernel would queue there for nobody (or drop SYNs once full).
 *
 * The program returns an index into the group's array of sockets, which is the
 * order they joined it in (listen() for TCP, bind() for UDP). The primary
 * creates member i after member i - 1 and never closes one while the service
 * runs, so index i is always worker i's socket (another process's sockets on the
 * same port with SO_REUSEPORT, under the same uid, would shift that: do not
 * share a group's port).
 */

// Classic BPF opcodes (linux/filter.h, linux/bpf_common.h).
const LD = 0x00, LDX = 0x01, ST = 0x02, ALU = 0x04, JMP = 0x05, RET = 0x06, MISC = 0x07;
const W = 0x00, H = 0x08, B = 0x10;
const ABS = 0x20, IND = 0x40, MEM = 0x60, MSH = 0xa0;
const K = 0x00, X = 0x08;
const MUL = 0x20, DIV = 0x30, RSH = 0x70, XOR = 0xa0, MOD = 0x90;
const JA = 0x00, JEQ = 0x10;
const TAX = 0x00;
/** Loads relative to the network header (SKF_NET_OFF): the program runs with skb->data past the transport header. */
const NET = -0x100000 >>> 0;

type Insn = [code: number, jt: number, jf: number, k: number];

const stmt = (code: number, k = 0): Insn => [code, 0, 0, k >>> 0];
const jump = (code: number, k: number, jt: number, jf: number): Insn => [code, jt, jf, k >>> 0];

/** Knuth's multiplicative constant: the product's high bits mix every bit of the key. */
const GOLDEN = 0x9e3779b1;

/**
 * The program for a group of `members` sockets of which `serving` (sorted
 * indices) have a worker. A flow hashes to a member; a member without a worker
 * passes it on to a serving one, chosen by more bits of the same hash (so a
 * missing worker's share spreads over all the others, not onto one).
 */
export function steeringProgram(members: number, serving: readonly number[]): number[] {
  if (!Number.isInteger(members) || members < 1 || members > 255) throw new RangeError('a group has 1 to 255 members');
  if (serving.length === 0 || serving.some((i) => !Number.isInteger(i) || i < 0 || i >= members)) throw new RangeError('at least one serving member, each below the group size');
  const active = new Set(serving);
  const hash: Insn[] = [
    // IPv4 or IPv6 (the version nibble of the network header).
    stmt(LD | B | ABS, NET),
    stmt(ALU | RSH | K, 4),
    jump(JMP | JEQ | K, 6, 5, 0),
    // IPv4: the source address, then the source port after the header (IHL).
    stmt(LD | W | ABS, NET + 12),
    stmt(ST, 0),
    stmt(LDX | B | MSH, NET),
    stmt(LD | H | IND, NET),
    jump(JMP | JA, 6, 0, 0),
    // IPv6: the low 64 bits of the source address, the port after the fixed header.
    stmt(LD | W | ABS, NET + 16),
    stmt(MISC | TAX),
    stmt(LD | W | ABS, NET + 20),
    stmt(ALU | XOR | X),
    stmt(ST, 0),
    stmt(LD | H | ABS, NET + 40),
    // A = port, M[0] = address: the hash, in M[1].
    stmt(MISC | TAX),
    stmt(LD | MEM, 0),
    stmt(ALU | XOR | X),
    stmt(ALU | MUL | K, GOLDEN),
    stmt(ALU | RSH | K, 16),
    stmt(ST, 1),
    stmt(ALU | MOD | K, members),
  ];
  // One comparison and one outcome per member: its own index, or a jump to the spread.
  const table: Insn[] = [];
  const spreadAt = hash.length + members * 2 + 1;
  for (let i = 0; i < members; i++) {
    table.push(jump(JMP | JEQ | K, i, 0, 1));
    const here = hash.length + table.length;
    table.push(active.has(i) ? stmt(RET | K, i) : stmt(JMP | JA, spreadAt - (here + 1)));
  }
  table.push(stmt(RET | K, serving[0]!));
  const spread: Insn[] = [stmt(LD | MEM, 1), stmt(ALU | DIV | K, members), stmt(ALU | MOD | K, serving.length)];
  serving.forEach((index, j) => {
    spread.push(jump(JMP | JEQ | K, j, 0, 1));
    spread.push(stmt(RET | K, index));
  });
  spread.push(stmt(RET | K, serving[0]!));
  const program = [...hash, ...table, ...spread];
  return program.flat();
}
