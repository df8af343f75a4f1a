"""Realistic demo customers: names of several locales, phone numbers of matching countries,
notes that mention the customer's first name and number. Deterministic (a seeded random),
so every run of the demo shows the same people; customer 1 is always Budi Santoso.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from dataclasses import dataclass

import asyncpg

SCHEMA = """
CREATE TABLE IF NOT EXISTS customers (
    id bigint PRIMARY KEY,
    full_name text NOT NULL,
    phone text NOT NULL,
    notes text NOT NULL DEFAULT '',
    email text NOT NULL DEFAULT '',
    city text NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS customers_full_name ON customers (full_name);
CREATE INDEX IF NOT EXISTS customers_phone ON customers (phone);
"""

COLUMNS = ("id", "full_name", "phone", "notes", "email", "city")


@dataclass(frozen=True, slots=True)
class Locale:
    name: str
    weight: int
    first: tuple[str, ...]
    last: tuple[str, ...]
    cities: tuple[str, ...]
    phone: Callable[[random.Random], str]
    family_first: bool = False  # Chinese, Japanese: family name first, no space for Chinese
    joiner: str = " "


def _digits(rng: random.Random, n: int) -> str:
    return "".join(rng.choice("0123456789") for _ in range(n))


def _id_phone(rng: random.Random) -> str:
    prefix = rng.choice(("811", "812", "813", "821", "822", "852", "853", "857", "878", "896"))
    style = rng.random()
    if style < 0.5:
        return f"+62 {prefix}-{_digits(rng, 4)}-{_digits(rng, 4)}"
    if style < 0.8:
        return f"0{prefix}{_digits(rng, 8)}"
    return f"0{prefix} {_digits(rng, 4)} {_digits(rng, 4)}"


LOCALES: tuple[Locale, ...] = (
    Locale(
        "id", 40,
        ("Budi", "Siti", "Agus", "Dewi", "Rina", "Wayan", "Made", "Putu", "Andi", "Sri",
         "Yusuf", "Rizky", "Fitri", "Indah", "Bambang", "Joko", "Nur", "Ayu", "Hendra", "Eko",
         "Ketut", "Lestari", "Dian", "Fajar", "Gita", "Hadi", "Intan", "Kurnia", "Wulan"),
        ("Santoso", "Wibowo", "Rahmawati", "Kusuma", "Hartono", "Setiawan", "Saputra",
         "Nugroho", "Susanto", "Pratama", "Wijaya", "Hidayat", "Lestari", "Sudirta", "Siregar",
         "Nasution", "Simanjuntak", "Halim", "Gunawan", "Purnomo", "Suryadi", "Utami"),
        ("Jakarta", "Surabaya", "Bandung", "Medan", "Denpasar", "Yogyakarta", "Makassar"),
        _id_phone,
    ),
    Locale(
        "en", 12,
        ("James", "Olivia", "Zoë", "Liam", "Emma", "Noah", "Amelia", "Oliver", "Grace", "Jack"),
        ("Smith", "O'Brien", "Johnson", "Williams", "Brown", "Taylor", "Wilson", "Davies"),
        ("London", "Manchester", "Dublin", "Leeds"),
        lambda r: f"+44 7{_digits(r, 3)} {_digits(r, 6)}",
    ),
    Locale(
        "es", 8,
        ("José", "María", "Lucía", "Alejandro", "Sofía", "Javier", "Carmen", "Pablo"),
        ("García", "Fernández", "López", "Martínez", "Sánchez", "Pérez", "Gómez", "Núñez"),
        ("Madrid", "Barcelona", "Sevilla", "Valencia"),
        lambda r: f"+34 6{_digits(r, 2)} {_digits(r, 3)} {_digits(r, 3)}",
    ),
    Locale(
        "de", 8,
        ("Jürgen", "Lena", "Matthias", "Anna", "Lukas", "Sophie", "Jörg", "Katrin"),
        ("Müller", "Schmidt", "Schneider", "Fischer", "Weiß", "Schäfer", "Becker", "Krüger"),
        ("Berlin", "München", "Hamburg", "Köln"),
        lambda r: f"+49 15{_digits(r, 1)} {_digits(r, 8)}",
    ),
    Locale(
        "ru", 8,
        ("Иван", "Ольга", "Дмитрий", "Анна", "Сергей", "Наталья", "Алексей", "Екатерина"),
        ("Петров", "Иванов", "Смирнов", "Кузнецов", "Попов", "Соколов", "Лебедев", "Новиков"),
        ("Москва", "Санкт-Петербург", "Казань"),
        lambda r: f"+7 9{_digits(r, 2)} {_digits(r, 3)}-{_digits(r, 2)}-{_digits(r, 2)}",
    ),
    Locale(
        "zh", 8,
        ("伟", "芳", "小明", "静", "磊", "秀英", "建国", "丽娟"),
        ("王", "李", "张", "刘", "陈", "杨", "黄", "赵"),
        ("北京", "上海", "广州", "深圳"),
        lambda r: f"+86 1{r.choice('3589')}{_digits(r, 1)} {_digits(r, 4)} {_digits(r, 4)}",
        family_first=True,
        joiner="",
    ),
    Locale(
        "ja", 6,
        ("太郎", "花子", "翔太", "さくら", "健", "由美"),
        ("田中", "佐藤", "鈴木", "高橋", "渡辺", "伊藤"),
        ("東京", "大阪", "京都"),
        lambda r: f"+81 90-{_digits(r, 4)}-{_digits(r, 4)}",
        family_first=True,
    ),
    Locale(
        "in", 6,
        ("Priya", "Rahul", "Ananya", "Arjun", "Deepika", "Vikram", "Lakshmi", "Sanjay"),
        ("Sharma", "Venkataraman", "Patel", "Iyer", "Reddy", "Gupta", "Nair", "Singh"),
        ("Mumbai", "Bengaluru", "Chennai", "Delhi"),
        lambda r: f"+91 9{_digits(r, 4)} {_digits(r, 5)}",
    ),
    Locale(
        "ar", 4,
        ("محمد", "فاطمة", "أحمد", "عائشة", "علي", "مريم"),
        ("عبد الرحمن", "الحسن", "العتيبي", "القحطاني", "الشمري"),
        ("الرياض", "جدة"),
        lambda r: f"+966 5{_digits(r, 1)} {_digits(r, 3)} {_digits(r, 4)}",
    ),
)

_NOTES = (
    "{first} asked to be called back on {phone} about the router.",
    "Spoke with {first}; prefers WhatsApp: {phone}.",
    "{first} reported slow internet since Monday. Callback number {phone}.",
    "Refund approved. {first} confirmed the address; reachable on {phone}.",
    "{first} called twice about the invoice, from {phone}.",
)

FIRST_CUSTOMER = ("Budi Santoso", "+62 812-3456-789", "Budi")


@dataclass(frozen=True, slots=True)
class Customer:
    id: int
    full_name: str
    phone: str
    notes: str
    email: str
    city: str

    def row(self) -> tuple[int, str, str, str, str, str]:
        return (self.id, self.full_name, self.phone, self.notes, self.email, self.city)


def generate(count: int, *, seed: int = 62) -> list[Customer]:
    """``count`` customers, ids 1..count; the same list for the same seed."""
    rng = random.Random(seed)  # noqa: S311  (sample data, not secrets)
    weights = [loc.weight for loc in LOCALES]
    out: list[Customer] = []
    for i in range(1, count + 1):
        loc = LOCALES[0] if i == 1 else rng.choices(LOCALES, weights)[0]
        first, last = rng.choice(loc.first), rng.choice(loc.last)
        phone = loc.phone(rng)
        if i == 1:
            full, phone, first = FIRST_CUSTOMER
        elif loc.family_first:
            full = f"{last}{loc.joiner}{first}"
        elif loc.name == "id" and rng.random() < 0.15:
            full = first  # a mononym, as many Indonesians have
        else:
            full = f"{first} {last}"
        note = rng.choice(_NOTES).format(first=first, phone=phone)
        email = f"c{i:06d}@mail.example"  # no name in it: the demo does not route emails
        out.append(Customer(i, full, phone, note, email, rng.choice(loc.cities)))
    return out


async def seed(
    pool: asyncpg.Pool,
    count: int,
    *,
    progress: Callable[[int], None] | None = None,
    batch: int = 1000,
) -> list[Customer]:
    """Create the table and COPY ``count`` customers into it; ``progress(n)`` after each batch."""
    customers = await asyncio.to_thread(generate, count)
    async with pool.acquire() as conn:
        await conn.execute(SCHEMA)
        for start in range(0, len(customers), batch):
            chunk = customers[start : start + batch]
            await conn.copy_records_to_table(
                "customers", records=[c.row() for c in chunk], columns=list(COLUMNS)
            )
            if progress is not None:
                progress(len(chunk))
        await conn.execute("ANALYZE customers")
    return customers
