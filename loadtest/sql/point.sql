\set id random(1, :customers)
SELECT id, full_name, phone FROM customers WHERE id = :id;
