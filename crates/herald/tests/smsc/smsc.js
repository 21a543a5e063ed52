// An SMSC for herald's SMPP tests: the npm package `smpp` (0.5.1, pinned in
// package.json) serving on a free loopback port, scripted over stdin.
//
// It prints `{"event":"listening","port":N}` once it listens, then one JSON
// line for each PDU it receives (`{"event":"pdu",...}`, the fields the
// package decoded) and for each connection closed.
//
// It binds `SMSC_SYSTEM_ID` / `SMSC_PASSWORD` (another password:
// ESME_RINVPASWD), answers each submit_sm with a message id given in hex
// and sends its delivery receipt: by TLVs (receipted_message_id in hex,
// message_state) and by text (the id in decimal), or by text alone.
//
// Commands, one JSON object a line on stdin:
//   {"cmd":"stat","to":"4477…","stat":"REJECTD"}  receipts of messages to
//       that number say this stat (DELIVRD otherwise); "NONE": no receipt
//   {"cmd":"receipts","style":"tlv"|"text"}  how receipts are given
//   {"cmd":"receipts_on","where":"other"|"same"}  send each receipt over
//       another bound connection than the message came on, if there is one
//   {"cmd":"throttle","n":2}  answer the next n submit_sm ESME_RTHROTTLED
//   {"cmd":"slow","ms":300}  answer each submit_sm after this long; each
//       submit_sm's log line then says how many were unanswered with it
//   {"cmd":"mo","from":"…","to":"…","text":"…"}  a person's message
//   {"cmd":"mo","from":"…","to":"…","parts":["…","…"],"order":[1,0]}  one in
//       parts with a concatenation header, sent in `order` (by index)
//   {"cmd":"drop"}  close every bound connection
//   {"cmd":"refuse_binds","n":1}  refuse the next n binds (ESME_RBINDFAIL)
//   {"cmd":"raw","hex":"…"}  write these bytes to the bound connection
'use strict';

const smpp = require('smpp');
const readline = require('readline');

const SYSTEM_ID = process.env.SMSC_SYSTEM_ID || 'herald';
const PASSWORD = process.env.SMSC_PASSWORD || 'secret';

let nextId = 0x1000;
let throttle = 0;
let refuseBinds = 0;
let style = 'tlv';
let receiptsOn = 'same';
let slow = 0;
let unanswered = 0;
const stats = new Map();
const bound = new Set();

function log(line) {
    process.stdout.write(JSON.stringify(line) + '\n');
}

function shown(pdu) {
    const fields = {};
    for (const [key, value] of Object.entries(pdu)) {
        if (key === 'password' || typeof value === 'function') {
            continue;
        }
        if (Buffer.isBuffer(value)) {
            fields[key] = {hex: value.toString('hex')};
        } else if (key === 'short_message' || key === 'message_payload') {
            const message = value && typeof value === 'object' ? value : {message: value};
            fields[key] = {
                message: Buffer.isBuffer(message.message)
                    ? message.message.toString('hex')
                    : message.message,
                udh: (message.udh || []).map((u) => u.toString('hex')),
            };
        } else {
            fields[key] = value;
        }
    }
    return fields;
}

function pad(n) {
    return String(n).padStart(10, '0');
}

function receipt(session, pdu, id) {
    const to = pdu.destination_addr;
    const stat = stats.get(to) || 'DELIVRD';
    if (stat === 'NONE') {
        return;
    }
    const states = {ENROUTE: 1, DELIVRD: 2, EXPIRED: 3, DELETED: 4, UNDELIV: 5,
        ACCEPTD: 6, UNKNOWN: 7, REJECTD: 8};
    const decimal = parseInt(id, 16).toString(10);
    const err = stat === 'DELIVRD' || stat === 'ACCEPTD' || stat === 'ENROUTE' ? '000' : '034';
    const text = `id:${pad(decimal)} sub:001 dlvrd:001 submit date:2512010000 ` +
        `done date:2512010001 stat:${stat} err:${err} text:`;
    const fields = {
        source_addr_ton: pdu.dest_addr_ton,
        source_addr_npi: pdu.dest_addr_npi,
        source_addr: to,
        dest_addr_ton: pdu.source_addr_ton,
        dest_addr_npi: pdu.source_addr_npi,
        destination_addr: pdu.source_addr,
        esm_class: 0x04,
        data_coding: 1,
        short_message: Buffer.from(text, 'ascii'),
    };
    if (style === 'tlv') {
        fields.receipted_message_id = id;
        fields.message_state = states[stat];
    }
    let over = session;
    if (receiptsOn === 'other') {
        over = [...bound].find((s) => s !== session) || session;
    }
    over.deliver_sm(fields, (resp) => {
        log({event: 'receipt_answered', id, command_status: resp.command_status,
            other: over !== session});
    });
}

const server = smpp.createServer((session) => {
    session.on('error', (e) => log({event: 'error', error: String(e && e.message)}));
    session.on('close', () => {
        bound.delete(session);
        log({event: 'closed'});
    });
    session.on('pdu', (pdu) => {
        log(Object.assign({event: 'pdu'}, shown(pdu)));
    });
    session.on('bind_transceiver', (pdu) => {
        if (refuseBinds > 0) {
            refuseBinds -= 1;
            session.send(pdu.response({command_status: smpp.ESME_RBINDFAIL}));
            return;
        }
        if (pdu.system_id !== SYSTEM_ID || pdu.password !== PASSWORD) {
            session.send(pdu.response({command_status: smpp.ESME_RINVPASWD}));
            return;
        }
        session.send(pdu.response({system_id: 'smsc'}));
        bound.add(session);
        log({event: 'bound'});
    });
    session.on('submit_sm', (pdu) => {
        if (throttle > 0) {
            throttle -= 1;
            session.send(pdu.response({command_status: smpp.ESME_RTHROTTLED}));
            return;
        }
        const id = (nextId++).toString(16).toUpperCase();
        unanswered += 1;
        log({event: 'submit_unanswered', unanswered});
        setTimeout(() => {
            unanswered -= 1;
            session.send(pdu.response({message_id: id}));
            setTimeout(() => receipt(session, pdu, id), 20);
        }, slow);
    });
    session.on('enquire_link', (pdu) => session.send(pdu.response()));
    session.on('unbind', (pdu) => {
        session.send(pdu.response());
        session.close();
    });
});

server.listen(0, '127.0.0.1', () => {
    log({event: 'listening', port: server.address().port});
});

readline.createInterface({input: process.stdin}).on('line', (line) => {
    if (!line.trim()) {
        return;
    }
    const command = JSON.parse(line);
    switch (command.cmd) {
    case 'stat':
        stats.set(command.to, command.stat);
        break;
    case 'receipts':
        style = command.style;
        break;
    case 'receipts_on':
        receiptsOn = command.where;
        break;
    case 'slow':
        slow = command.ms;
        break;
    case 'throttle':
        throttle = command.n;
        break;
    case 'refuse_binds':
        refuseBinds = command.n;
        break;
    case 'mo':
        for (const session of bound) {
            const address = {
                source_addr_ton: 1, source_addr_npi: 1, source_addr: command.from,
                dest_addr_ton: 1, dest_addr_npi: 1, destination_addr: command.to,
            };
            const answered = (resp) =>
                log({event: 'mo_answered', command_status: resp.command_status});
            if (!command.parts) {
                session.deliver_sm(Object.assign({short_message: command.text}, address),
                    answered);
                break;
            }
            const total = command.parts.length;
            const order = command.order || command.parts.map((_, i) => i);
            for (const i of order) {
                const udh = Buffer.from([5, 0, 3, 0x42, total, i + 1]);
                session.deliver_sm(Object.assign({
                    esm_class: 0x40,
                    short_message: {udh, message: command.parts[i]},
                }, address), answered);
            }
            break;
        }
        break;
    case 'drop':
        for (const session of bound) {
            session.socket.destroy();
        }
        break;
    case 'raw':
        for (const session of bound) {
            session.socket.write(Buffer.from(command.hex, 'hex'));
            break;
        }
        break;
    default:
        log({event: 'unknown_command', command});
    }
    log({event: 'done', cmd: command.cmd});
});

process.stdin.on('end', () => process.exit(0));
